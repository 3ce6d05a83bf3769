"""training-hub 0.11.2 conformance for OSFT: ``osft()`` and ``OSFTAlgorithm.train`` take its
parameters in its order (then the cluster settings, keyword-only), as for ``sft()``
(test_training_hub_conformance.py); the reference is tests/unit/training_hub_osft_signatures.json,
written from the wheel by devtools/training_hub_reference.py. Bad OSFT parameters are refused
before anything is sent, naming the parameter and the spec field."""

from __future__ import annotations

import inspect
import json
import subprocess
from dataclasses import fields
from typing import Any

import pytest

from devtools import training_hub_reference as reference
from sft_client.api import KubernetesOSFTBackend, OSFTAlgorithm, SFTParameterError, osft
from sft_client.api.mapping import ClusterOptions
from sft_client.api.osft import TRAINING_HUB_OSFT_PARAMS

REFERENCE = json.loads(reference.OSFT_REFERENCE.read_text())

BASE: dict[str, Any] = dict(
    model_path="Qwen/Qwen2.5-7B-Instruct",
    data_path="pvc://datasets/train.jsonl",
    ckpt_output_dir="pvc://ckpts/run1",
    unfreeze_rank_ratio=0.25,
    effective_batch_size=8,
    max_tokens_per_gpu=4096,
    max_seq_len=2048,
    learning_rate=1e-5,
)


def described(function: Any) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "kind": param.kind.name,
            "default": None if param.default is inspect.Parameter.empty else repr(param.default),
        }
        for name, param in inspect.signature(function).parameters.items()
    ]


def problems(**params: Any) -> list[tuple[str, str | None, str]]:
    with pytest.raises(SFTParameterError) as raised:
        KubernetesOSFTBackend(name="job").build({**BASE, **params})
    return [(p.param, p.spec_path, p.message) for p in raised.value.parameters]


def test_osft_takes_training_hubs_parameters_in_its_order_then_the_cluster_settings_keyword_only() -> None:
    theirs = REFERENCE["signatures"]["osft"]
    ours = described(osft)
    assert theirs[-1] == {"name": "kwargs", "kind": "VAR_KEYWORD", "default": None}
    assert ours[: len(theirs) - 1] == theirs[:-1]
    assert ours[-1] == theirs[-1]
    assert [(p["name"], p["kind"], p["default"]) for p in ours[len(theirs) - 1 : -1]] == [
        (f.name, "KEYWORD_ONLY", repr(f.default)) for f in fields(ClusterOptions)
    ]


def test_train_takes_training_hubs_parameters_exactly() -> None:
    assert described(OSFTAlgorithm.train) == REFERENCE["signatures"]["OSFTAlgorithm.train"]


def test_the_parameter_list_is_training_hubs() -> None:
    assert list(TRAINING_HUB_OSFT_PARAMS) == [p["name"] for p in REFERENCE["signatures"]["osft"][:-1]]


def test_the_reference_is_what_the_wheel_says() -> None:
    try:
        wheel = reference.download_wheel()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        pytest.skip(f"{reference.WHEEL_NAME} not cached and pip could not fetch it: {exc}")
    assert reference.reference_from_wheel(wheel, reference.OSFT_SOURCE, reference.OSFT_FUNCTIONS) == REFERENCE
    assert reference.dump(REFERENCE) == reference.OSFT_REFERENCE.read_text()


def test_an_osft_job_is_built_with_typed_osft_fields() -> None:
    manifest, _ = KubernetesOSFTBackend(name="job", namespace="ml").build(
        {
            **BASE,
            "target_patterns": ["q_proj"],
            "seed": 3,
            "lr_scheduler": "cosine",
            "num_epochs": 2,
            "nnodes": 2,
            "backend": "mini-trainer",
            "enable_jit_checkpoint": True,
            "on_demand_checkpointing": True,
        }
    )
    assert manifest["spec"] == {
        "algorithm": "osft",
        "modelPath": "Qwen/Qwen2.5-7B-Instruct",
        "dataPath": "/mnt/pvc/datasets/train.jsonl",
        "numEpochs": 2,
        "effectiveBatchSize": 8,
        "learningRate": 1e-5,
        "maxSeqLen": 2048,
        "maxTokensPerGpu": 4096,
        "unfreezeRankRatio": 0.25,
        "targetPatterns": ["q_proj"],
        "seed": 3,
        "lrScheduler": "cosine",
        "nnodes": 2,
        "checkpoints": {"existingClaim": "ckpts", "path": "run1"},
        "pod": manifest["spec"]["pod"],
    }


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (
            {"unfreeze_rank_ratio": 1.5},
            [("unfreeze_rank_ratio", "spec.unfreezeRankRatio", "Input should be less than or equal to 1")],
        ),
        (
            {"unfreeze_rank_ratio": None},
            [("unfreeze_rank_ratio", "spec.unfreezeRankRatio", "required when spec.algorithm is osft")],
        ),
        (
            {"max_tokens_per_gpu": 1024},
            [
                (
                    "max_tokens_per_gpu",
                    "spec.maxTokensPerGpu",
                    "must be at least spec.maxSeqLen (one full sequence per GPU)",
                )
            ],
        ),
        (
            {"save_samples": 100},
            [
                (
                    "save_samples",
                    "spec.saveSamples",
                    "an instructlab-training (sft) parameter: not allowed when spec.algorithm is osft",
                )
            ],
        ),
        (
            {"use_processed_dataset": True},
            [("use_processed_dataset", None, "the operator processes the data once itself (messages JSONL)")],
        ),
        (
            {"backend": "instructlab-training"},
            [
                (
                    "backend",
                    None,
                    "'instructlab-training': the cluster runs 'mini-trainer' for osft "
                    "(give backend='mini-trainer' or 'kubernetes')",
                )
            ],
        ),
    ],
)
def test_bad_osft_parameters_are_refused_naming_them(params: dict[str, Any], expected) -> None:
    assert problems(**params) == expected


def test_osft_refuses_before_contacting_anything() -> None:
    with pytest.raises(SFTParameterError) as raised:
        osft(**{**BASE, "unfreeze_rank_ratio": 1.5}, api_client=object())
    assert [p.param for p in raised.value.parameters] == ["unfreeze_rank_ratio"]


from test_training_hub_conformance import run_with_training_hub, training_hub_path  # noqa: E402,F401 - its fixture


def test_with_training_hub_its_osft_routes_backend_kubernetes_to_ours(training_hub_path) -> None:
    found = run_with_training_hub(
        training_hub_path,
        """
        import json
        import sft_client.api as api
        import training_hub
        from training_hub import AlgorithmRegistry, osft

        registered = AlgorithmRegistry.get_backend("osft", "kubernetes") is api.KubernetesOSFTBackend
        try:  # training_hub's own osft() hands its parameters to our backend: checked before any cluster
            osft(model_path="m", data_path="pvc://datasets/train.jsonl", unfreeze_rank_ratio=0.5,
                 effective_batch_size=8, max_tokens_per_gpu=1024, max_seq_len=2048, learning_rate=1e-5,
                 ckpt_output_dir="pvc://ckpts/run1", backend="kubernetes", namespace="ml")
            refused = None
        except api.SFTParameterError as exc:
            refused = str(exc)

        class Built(api.KubernetesOSFTBackend):
            def execute_training(self, algorithm_params):
                return self.build(algorithm_params)[0]

        manifest = training_hub.OSFTAlgorithm(backend=Built()).train(
            model_path="Qwen/Qwen2.5-7B-Instruct", data_path="pvc://datasets/train.jsonl", unfreeze_rank_ratio=0.25,
            effective_batch_size=8, max_tokens_per_gpu=4096, max_seq_len=2048, learning_rate=1e-5,
            ckpt_output_dir="pvc://ckpts/run1", target_patterns=["q_proj"], seed=3, lr_scheduler="cosine",
            num_epochs=2, nnodes=2, enable_jit_checkpoint=True, name="job", namespace="ml")
        print(json.dumps({"registered": registered, "refused": refused, "manifest": manifest}))
    """,
    )
    assert found["registered"] is True
    assert found["refused"] == (
        "invalid sft() parameters: max_tokens_per_gpu (spec.maxTokensPerGpu): must be at "
        "least spec.maxSeqLen (one full sequence per GPU)"
    )
    ours, _ = KubernetesOSFTBackend(name="job", namespace="ml").build(
        {**BASE, "target_patterns": ["q_proj"], "seed": 3, "lr_scheduler": "cosine", "num_epochs": 2, "nnodes": 2}
    )
    assert found["manifest"] == ours
