"""The two training algorithms an SFTJob runs: ``sft`` (instructlab-training, training_hub's
``sft()``) and ``osft`` (Orthogonal Subspace Fine-Tuning with rhai-innovation-mini-trainer,
training_hub's ``osft()``). Which spec fields belong to which, and OSFT's launcher arguments.

Pure and light (the trainer image and the CRD generator import it): no models import, the spec
is read by attribute.
"""

from __future__ import annotations

import enum
import posixpath
from typing import Any

MINI_TRAINER_VERSION = "0.9.0"


class Algorithm(str, enum.Enum):
    SFT = "sft"
    OSFT = "osft"


# Spec fields (camelCase) that only instructlab-training has, with the value that means "unset"
# (their defaults: the apiserver fills defaults before CEL sees the object, so the CRD's rules
# can only compare with them). An OSFT job may leave them out or at that value.
SFT_ONLY_FIELDS: dict[str, Any] = {
    "saveSamples": 0,
    "accelerateFullStateAtEpoch": True,
    "isPretraining": False,
    "blockSize": None,
    "documentColumnName": None,
    "validationSplit": 0.0,
    "validationFrequency": None,
    "tensorboardLogDir": None,
    "extraArgs": {},
}
# training_hub osft() parameters without an SFT meaning here (all optional: unset is None),
# but unfreezeRankRatio, which an OSFT job must set.
OSFT_ONLY_FIELDS: tuple[str, ...] = (
    "unfreezeRankRatio",
    "targetPatterns",
    "seed",
    "lrScheduler",
    "lrSchedulerKwargs",
    "saveFinalCheckpoint",
    "useLiger",
)
# The spec path (camelCase) of each attribute above, for problems by attribute name.
_ATTRIBUTES = {
    "saveSamples": "save_samples",
    "accelerateFullStateAtEpoch": "accelerate_full_state_at_epoch",
    "isPretraining": "is_pretraining",
    "blockSize": "block_size",
    "documentColumnName": "document_column_name",
    "validationSplit": "validation_split",
    "validationFrequency": "validation_frequency",
    "tensorboardLogDir": "tensorboard_log_dir",
    "extraArgs": "extra_args",
    "unfreezeRankRatio": "unfreeze_rank_ratio",
    "targetPatterns": "target_patterns",
    "seed": "seed",
    "lrScheduler": "lr_scheduler",
    "lrSchedulerKwargs": "lr_scheduler_kwargs",
    "saveFinalCheckpoint": "save_final_checkpoint",
    "useLiger": "use_liger",
}


def algorithm_problems(spec: Any) -> list[tuple[str, str]]:
    """(spec path, message): a field of the other algorithm, or OSFT's missing ratio."""
    problems: list[tuple[str, str]] = []
    algorithm = Algorithm(spec.algorithm)
    if algorithm is Algorithm.OSFT:
        if spec.unfreeze_rank_ratio is None:
            problems.append(("spec.unfreezeRankRatio", "required when spec.algorithm is osft"))
        for field, unset in SFT_ONLY_FIELDS.items():
            value = getattr(spec, _ATTRIBUTES[field])
            if value != unset:
                problems.append(
                    (
                        f"spec.{field}",
                        "an instructlab-training (sft) parameter: not allowed when spec.algorithm is osft",
                    )
                )
    else:
        for field in OSFT_ONLY_FIELDS:
            if getattr(spec, _ATTRIBUTES[field]) is not None:
                problems.append((f"spec.{field}", "an OSFT parameter: only when spec.algorithm is osft"))
    return problems


def cel_rules() -> list[tuple[str, str, str]]:
    """The CRD's rules (on spec itself) that mirror algorithm_problems."""
    osft = "has(self.algorithm) && self.algorithm == 'osft'"
    rules = [
        (
            "",
            f"!({osft}) || has(self.unfreezeRankRatio)",
            "spec.unfreezeRankRatio: required when spec.algorithm is osft",
        )
    ]
    for field, unset in SFT_ONLY_FIELDS.items():
        if unset is None:
            allowed = f"!has(self.{field})"
        elif isinstance(unset, dict):
            allowed = f"!has(self.{field}) || size(self.{field}) == 0"
        elif isinstance(unset, bool):
            allowed = f"!has(self.{field}) || self.{field} == {str(unset).lower()}"
        else:
            allowed = f"!has(self.{field}) || self.{field} == {unset!r}"
        rules.append(
            (
                "",
                f"!({osft}) || {allowed}",
                f"spec.{field}: an instructlab-training (sft) parameter: not allowed when spec.algorithm is osft",
            )
        )
    for field in OSFT_ONLY_FIELDS:
        rules.append(
            ("", f"{osft} || !has(self.{field})", f"spec.{field}: an OSFT parameter: only when spec.algorithm is osft")
        )
    return rules


def osft_training_args(
    spec: Any, ckpt_output_dir: str, logger_fields: tuple[str, ...], *, model_path: str, data_path: str
) -> dict[str, Any]:
    """The launcher's trainingArgs for an OSFT job: training_hub osft()'s parameter names (the
    launcher maps them onto mini-trainer's as training_hub's backend does). ``model_path`` and
    ``data_path``: where the pod reads them (a remote source's local copy, as for SFT)."""
    args: dict[str, Any] = {
        "model_path": model_path,
        "data_path": data_path,
        "ckpt_output_dir": ckpt_output_dir,
        "data_output_dir": spec.data_output_dir or posixpath.join(ckpt_output_dir, "data"),
        "unfreeze_rank_ratio": spec.unfreeze_rank_ratio,
        "num_epochs": spec.num_epochs,
        "effective_batch_size": spec.effective_batch_size,
        "learning_rate": spec.learning_rate,
        "max_seq_len": spec.max_seq_len,
        "max_tokens_per_gpu": spec.max_tokens_per_gpu or spec.max_seq_len,
        "warmup_steps": spec.warmup_steps,
        "checkpoint_at_epoch": spec.checkpoint_at_epoch,
        "beta1": spec.beta1,
        "beta2": spec.beta2,
        "eps": spec.eps,
        "weight_decay": spec.weight_decay,
    }
    for name in (
        "target_patterns",
        "seed",
        "lr_scheduler",
        "lr_scheduler_kwargs",
        "save_final_checkpoint",
        "use_liger",
        *logger_fields,
    ):
        value = getattr(spec, name)
        if value is not None:
            args[name] = value
    return args
