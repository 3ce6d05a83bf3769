"""spec.algorithm: osft (issue 24): OSFT's typed fields, what each algorithm refuses, the launcher
config an OSFT job renders, and that an SFT job renders and hashes exactly as before."""

from __future__ import annotations

from typing import Any

import pytest

from sft_core import contract, ownership
from sft_models.models import InvalidSpecError, parse_spec


def minimal(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "modelPath": "/models/qwen",
        "dataPath": "/data/train.jsonl",
        "numEpochs": 2,
        "effectiveBatchSize": 16,
        "learningRate": 2e-5,
        "maxSeqLen": 1024,
        "checkpoints": {"claim": {"size": "10Gi"}},
    }
    spec.update(overrides)
    return spec


def osft(**overrides: Any) -> dict[str, Any]:
    return minimal(algorithm="osft", unfreezeRankRatio=0.25, **overrides)


def problems(spec: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(InvalidSpecError) as info:
        parse_spec(spec)
    return info.value.problems


def test_osft_config_uses_training_hub_osft_names() -> None:
    spec = parse_spec(
        osft(
            maxTokensPerGpu=4096,
            warmupSteps=10,
            targetPatterns=["q_proj", "v_proj"],
            seed=7,
            lrScheduler="cosine",
            lrSchedulerKwargs={"num_cycles": 1},
            saveFinalCheckpoint=False,
            useLiger=True,
            beta2=0.99,
            wandbProject="p",
            dataOutputDir="/data/processed",
        )
    )
    config = spec.training_config("job", "ns", "uid-1")
    assert config == {
        contract.CONFIG_KEY_JOB_UID: "uid-1",
        contract.CONFIG_KEY_ALGORITHM: "osft",
        contract.CONFIG_KEY_JOB_NAME: "job",
        contract.CONFIG_KEY_NAMESPACE: "ns",
        contract.CONFIG_KEY_NUM_EPOCHS: 2,
        contract.CONFIG_KEY_RETENTION: None,
        contract.CONFIG_KEY_TRAINING_ARGS: {
            "model_path": "/models/qwen",
            "data_path": "/data/train.jsonl",
            "ckpt_output_dir": "/checkpoints",
            "data_output_dir": "/data/processed",
            "unfreeze_rank_ratio": 0.25,
            "num_epochs": 2,
            "effective_batch_size": 16,
            "learning_rate": 2e-5,
            "max_seq_len": 1024,
            "max_tokens_per_gpu": 4096,
            "warmup_steps": 10,
            "checkpoint_at_epoch": True,
            "beta1": 0.9,
            "beta2": 0.99,
            "eps": 1e-8,
            "weight_decay": 0.0,
            "target_patterns": ["q_proj", "v_proj"],
            "seed": 7,
            "lr_scheduler": "cosine",
            "lr_scheduler_kwargs": {"num_cycles": 1},
            "save_final_checkpoint": False,
            "use_liger": True,
            "wandb_project": "p",
        },
        contract.CONFIG_KEY_TRAINING_FIELDS: config[contract.CONFIG_KEY_TRAINING_FIELDS],
        contract.CONFIG_KEY_ADOPT_EXISTING: False,
    }
    fields = config[contract.CONFIG_KEY_TRAINING_FIELDS]
    assert (fields["algorithm"], fields["unfreezeRankRatio"], fields["targetPatterns"]) == (
        "osft",
        0.25,
        ["q_proj", "v_proj"],
    )


def test_a_remote_model_is_read_where_the_transfer_puts_it_as_for_sft() -> None:
    sft_config = parse_spec(minimal(modelPath="hf://Qwen/Qwen2.5-0.5B-Instruct")).training_config("job", "ns")
    osft_config = parse_spec(osft(modelPath="hf://Qwen/Qwen2.5-0.5B-Instruct")).training_config("job", "ns")
    assert (
        osft_config["trainingArgs"]["model_path"]
        == sft_config["trainingArgs"]["model_path"]
        != "hf://Qwen/Qwen2.5-0.5B-Instruct"
    )
    assert osft_config["sources"] == sft_config["sources"]


def test_osft_defaults_max_tokens_per_gpu_to_max_seq_len_and_leaves_unset_fields_out() -> None:
    args = parse_spec(osft()).training_config("job", "ns")[contract.CONFIG_KEY_TRAINING_ARGS]
    assert args["max_tokens_per_gpu"] == 1024 and args["data_output_dir"] == "/checkpoints/data"
    assert not {"seed", "target_patterns", "lr_scheduler", "use_liger", "save_final_checkpoint"} & set(args)


def test_an_sft_job_renders_and_hashes_as_before_osft_existed() -> None:
    spec = parse_spec(minimal())
    config = spec.training_config("job", "ns")
    assert contract.CONFIG_KEY_ALGORITHM not in config
    fields = spec.training_fields_view()
    assert "algorithm" not in fields and "unfreezeRankRatio" not in fields
    # The hash a directory's owner record holds for this spec, computed by the code before issue 24.
    before = "sha256:e577436002b530c4b513856a59f67283337db2e61612ad855a8420cf0f29ed10"
    assert ownership.training_fields_hash(fields) == before
    assert ownership.training_fields_hash(parse_spec(minimal(algorithm="sft")).training_fields_view()) == before
    assert spec.algorithm.value == "sft"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"algorithm": "osft"}, [("spec.unfreezeRankRatio", "required when spec.algorithm is osft")]),
        (
            {"algorithm": "osft", "unfreezeRankRatio": 1.5},
            [("spec.unfreezeRankRatio", "Input should be less than or equal to 1")],
        ),
        ({"algorithm": "osft", "unfreezeRankRatio": 0}, [("spec.unfreezeRankRatio", "Input should be greater than 0")]),
        (
            {"algorithm": "osft", "unfreezeRankRatio": 0.5, "maxTokensPerGpu": 512},
            [("spec.maxTokensPerGpu", "must be at least spec.maxSeqLen (one full sequence per GPU)")],
        ),
        (
            {"algorithm": "osft", "unfreezeRankRatio": 0.5, "saveSamples": 1000},
            [("spec.saveSamples", "an instructlab-training (sft) parameter: not allowed when spec.algorithm is osft")],
        ),
        (
            {"algorithm": "osft", "unfreezeRankRatio": 0.5, "extraArgs": {"use_liger": True}},
            [("spec.extraArgs", "an instructlab-training (sft) parameter: not allowed when spec.algorithm is osft")],
        ),
        (
            {"unfreezeRankRatio": 0.5},
            [("spec.unfreezeRankRatio", "an OSFT parameter: only when spec.algorithm is osft")],
        ),
        (
            {"seed": 1, "lrScheduler": "cosine"},
            [
                ("spec.seed", "an OSFT parameter: only when spec.algorithm is osft"),
                ("spec.lrScheduler", "an OSFT parameter: only when spec.algorithm is osft"),
            ],
        ),
    ],
)
def test_bad_osft_specs_are_refused_naming_the_field(overrides: dict[str, Any], expected) -> None:
    assert problems(minimal(**overrides)) == expected


def test_sft_fields_at_their_defaults_are_fine_on_an_osft_job() -> None:
    spec = parse_spec(osft(saveSamples=0, accelerateFullStateAtEpoch=True, validationSplit=0.0, extraArgs={}))
    assert spec.algorithm.value == "osft" and spec.unfreeze_rank_ratio == 0.25


def test_the_osft_example_is_valid() -> None:
    import yaml

    from sft_models.models import parse_job

    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    job = parse_job(yaml.safe_load((root / "examples" / "sftjob-osft.yaml").read_text()))
    assert (job.spec.algorithm.value, job.spec.unfreeze_rank_ratio, job.spec.nnodes) == ("osft", 0.25, 2)
