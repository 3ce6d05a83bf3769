"""SFTJobSpec: defaults, the training_hub name mapping, and errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from sft_core import contract
from sft_models.models import (
    IMMUTABLE_FIELDS,
    InvalidSpecError,
    SFTJobSpec,
    default_sharding_strategy,
    epoch_full_state_warning,
    parse_job,
    parse_spec,
)


def minimal(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "modelPath": "Qwen/Qwen2.5-0.5B-Instruct",
        "dataPath": "/data/train.jsonl",
        "numEpochs": 2,
        "effectiveBatchSize": 16,
        "learningRate": 2e-5,
        "maxSeqLen": 1024,
        "checkpoints": {"claim": {"size": "10Gi"}},
    }
    spec.update(overrides)
    return spec


def problems(spec: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(InvalidSpecError) as info:
        parse_spec(spec)
    return info.value.problems


def test_training_args_map_names_as_training_hub_does() -> None:
    spec = parse_spec(
        minimal(
            maxTokensPerGpu=4096,
            beta1=0.8,
            beta2=0.99,
            eps=1e-6,
            weightDecay=0.01,
            isPretraining=True,
            blockSize=512,
            documentColumnName="text",
            validationSplit=0.1,
            validationFrequency=50,
            wandbProject="p",
            mlflowTrackingUri="http://mlflow:5000",
            tensorboardLogDir="/checkpoints/tb",
            extraArgs={"keep_last_checkpoint_only": True, "fsdp_options": {"cpu_offload_params": True}},
            checkpoints={"claim": {"size": "10Gi"}, "path": "runs/a"},
        )
    )
    assert spec.training_args() == {
        # The Hugging Face id is fetched once onto the volume (sources.py); the trainer reads the copy.
        "model_path": "/checkpoints/.sft-sources/Qwen-Qwen2.5-0.5B-Instruct-3e9c25eb1467/files",
        "data_path": "/data/train.jsonl",
        "ckpt_output_dir": "/checkpoints/runs/a",
        "data_output_dir": "/checkpoints/runs/a/data",
        "num_epochs": 2,
        "effective_batch_size": 16,
        "learning_rate": 2e-5,
        "max_seq_len": 1024,
        "max_batch_len": 4096,
        "warmup_steps": 0,
        "save_samples": 0,
        "checkpoint_at_epoch": True,
        "accelerate_full_state_at_epoch": True,
        "adamw_betas": [0.8, 0.99],
        "adamw_eps": 1e-6,
        "adamw_weight_decay": 0.01,
        "validation_split": 0.1,
        "validation_frequency": 50,
        "pretraining_config": {"block_size": 512, "document_column_name": "text"},
        "wandb_project": "p",
        "mlflow_tracking_uri": "http://mlflow:5000",
        "tensorboard_log_dir": "/checkpoints/tb",
        "fsdp_options": {"cpu_offload_params": True, "sharding_strategy": "HYBRID_SHARD"},
        "keep_last_checkpoint_only": True,
    }


def test_max_batch_len_defaults_to_max_seq_len_and_ckpt_dir_to_the_mount() -> None:
    args = parse_spec(minimal()).training_args()
    assert args["max_batch_len"] == 1024
    assert args["ckpt_output_dir"] == contract.CHECKPOINT_MOUNT_PATH
    assert "pretraining_config" not in args and "validation_frequency" not in args


def test_training_config_follows_the_contract() -> None:
    config = parse_spec(minimal(fullStateRetention=2, modelPath="/models/m")).training_config("job", "ns")
    assert set(config) == {
        contract.CONFIG_KEY_JOB_NAME,
        contract.CONFIG_KEY_NAMESPACE,
        contract.CONFIG_KEY_NUM_EPOCHS,
        contract.CONFIG_KEY_RETENTION,
        contract.CONFIG_KEY_TRAINING_ARGS,
        contract.CONFIG_KEY_TRAINING_FIELDS,
        contract.CONFIG_KEY_ADOPT_EXISTING,
    }
    assert config[contract.CONFIG_KEY_RETENTION] == 2
    assert config[contract.CONFIG_KEY_NUM_EPOCHS] == 2
    assert config[contract.CONFIG_KEY_ADOPT_EXISTING] is False
    # The job's uid only when it has one (an SFTJob from the API always does).
    assert parse_spec(minimal()).training_config("job", "ns", "uid-1")[contract.CONFIG_KEY_JOB_UID] == "uid-1"


@pytest.mark.parametrize(
    ("nnodes", "nproc", "expected"),
    [(1, 1, "HYBRID_SHARD"), (1, 8, "HYBRID_SHARD"), (2, 8, "HYBRID_SHARD"), (4, 1, "FULL_SHARD")],
)
def test_sharding_default_per_topology(nnodes: int, nproc: int, expected: str) -> None:
    assert default_sharding_strategy(nnodes, nproc) == expected
    spec = parse_spec(minimal(nnodes=nnodes, nprocPerNode=nproc, effectiveBatchSize=64))
    assert spec.training_args()["fsdp_options"] == {"sharding_strategy": expected}


def test_user_sharding_strategy_wins() -> None:
    spec = parse_spec(minimal(nnodes=4, extraArgs={"fsdp_options": {"sharding_strategy": "NO_SHARD"}}))
    assert spec.training_args()["fsdp_options"] == {"sharding_strategy": "NO_SHARD"}


def test_defaults_and_camel_case_round_trip() -> None:
    spec = parse_spec(minimal())
    assert (spec.nnodes, spec.nproc_per_node, spec.rdzv_port) == (1, 1, contract.DEFAULT_RDZV_PORT)
    assert spec.device.value == "cuda" and spec.suspend is False and spec.max_restarts == 3
    assert spec.checkpoints.delete_with_job is False
    assert SFTJobSpec.model_validate(spec.to_api()) == spec


def test_access_modes_default_to_shared_when_multi_node() -> None:
    assert parse_spec(minimal()).checkpoint_access_modes() == ["ReadWriteOnce"]
    assert parse_spec(minimal(nnodes=2)).checkpoint_access_modes() == ["ReadWriteMany"]


@pytest.mark.parametrize(
    ("overrides", "path", "fragment"),
    [
        ({"extraArgs": {"foo_bar": 1}}, "spec.extraArgs.foo_bar", "unknown instructlab-training argument"),
        ({"extraArgs": {"max_seq_len": 1}}, "spec.extraArgs.max_seq_len", "spec.maxSeqLen"),
        ({"extraArgs": {"callbacks": []}}, "spec.extraArgs.callbacks", "Python objects"),
        ({"validationSplit": 0.1}, "spec.validationFrequency", "validationSplit > 0"),
        ({"isPretraining": True}, "spec.blockSize", "isPretraining"),
        ({"nnodes": 4, "nprocPerNode": 8}, "spec.effectiveBatchSize", "32"),
        ({"maxTokensPerGpu": 100}, "spec.maxTokensPerGpu", "maxSeqLen"),
        ({"checkpoints": {}}, "spec.checkpoints", "exactly one"),
        ({"checkpoints": {"existingClaim": "a", "claim": {"size": "1Gi"}}}, "spec.checkpoints", "exactly one"),
        (
            {"nnodes": 2, "checkpoints": {"claim": {"size": "1Gi", "accessModes": ["ReadWriteOnce"]}}},
            "spec.checkpoints.claim.accessModes",
            "ReadWriteMany",
        ),
        ({"checkpoints": {"existingClaim": "a", "path": "../x"}}, "spec.checkpoints.path", "relative"),
        ({"checkpoints": {"existingClaim": "a", "path": "/x"}}, "spec.checkpoints.path", "relative"),
        ({"pod": {"env": [{"name": "PET_NNODES", "value": "9"}]}}, "spec.pod.env[0].name", "set by the operator"),
        ({"pod": {"volumes": [{"name": "dshm", "emptyDir": {}}]}}, "spec.pod.volumes[0].name", "reserved"),
        ({"pod": {"volumeMounts": [{"name": "x", "mountPath": "/etc/sft"}]}}, "spec.pod.volumeMounts[0].mountPath", ""),
        ({"numEpochs": 0}, "spec.numEpochs", "greater than or equal to 1"),
        ({"learningRate": 0}, "spec.learningRate", "greater than 0"),
        ({"beta2": 1.0}, "spec.beta2", "less than 1"),
        ({"device": "tpu"}, "spec.device", "'cuda' or 'cpu'"),
        ({"pod": {"resources": {"limits": {"cpu": "lots"}}}}, "spec.pod.resources.limits.cpu", "quantity"),
        ({"checkpoints": {"claim": {"size": "big"}}}, "spec.checkpoints.claim.size", "pattern"),
        ({"bogus": 1}, "spec.bogus", "Extra inputs"),
    ],
)
def test_invalid_spec_names_the_field(overrides: dict[str, Any], path: str, fragment: str) -> None:
    found = problems(minimal(**overrides))
    assert any(p == path and fragment in m for p, m in found), found


def test_missing_required_fields_are_all_named() -> None:
    found = {p for p, _ in problems({"checkpoints": {"existingClaim": "c"}})}
    assert found == {
        "spec.modelPath",
        "spec.dataPath",
        "spec.numEpochs",
        "spec.effectiveBatchSize",
        "spec.learningRate",
        "spec.maxSeqLen",
    }


def test_error_message_reads_path_colon_message() -> None:
    with pytest.raises(InvalidSpecError) as info:
        parse_spec(minimal(extraArgs={"foo_bar": True}))
    assert str(info.value) == "spec.extraArgs.foo_bar: unknown instructlab-training argument"


@pytest.mark.parametrize(
    ("name", "ok"), [("a" * 52, True), ("a" * 53, False), ("job-1", True), ("1job", False), ("a.b", False)]
)
def test_job_name_rules(name: str, ok: bool) -> None:
    body = {"metadata": {"name": name, "namespace": "ns"}, "spec": minimal()}
    if ok:
        assert parse_job(body).metadata.name == name
    else:
        with pytest.raises(InvalidSpecError) as info:
            parse_job(body)
        assert info.value.problems[0][0] == "metadata.name"


def test_immutable_view_lists_every_immutable_field() -> None:
    view = parse_spec(minimal()).immutable_view()
    assert list(view) == list(IMMUTABLE_FIELDS)
    assert view["numEpochs"] == 2 and view["checkpoints.claim"] == {"size": "10Gi"}
    assert view["maxTokensPerGpu"] is None


@pytest.mark.parametrize("example", ["examples/sftjob-minimal.yaml", "examples/sftjob-llama-2x8.yaml"])
def test_examples_are_valid(example: str) -> None:
    job = parse_job(yaml.safe_load(open(example)))
    assert job.spec.training_args()["model_path"]


def test_the_readme_status_table_lists_every_reason() -> None:
    """Every condition reason the operator writes, and the Warning Events of the run policy, are in
    the README's status table."""
    from pathlib import Path

    from sft_models.models import Reason

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme[readme.index("## Status") : readme.index("### How the facts get from the volume")]
    missing = [
        r
        for r in [*(reason.value for reason in Reason), "Stalled", "RestartingGroup", "RanksLeftBehind"]
        if f"`{r}`" not in table
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("spec", "warned"),
    [
        ({}, False),
        ({"checkpointAtEpoch": True}, False),
        ({"checkpointAtEpoch": False}, True),
        ({"checkpointAtEpoch": False, "accelerateFullStateAtEpoch": True}, True),
        ({"checkpointAtEpoch": False, "accelerateFullStateAtEpoch": False}, False),
        ({"accelerateFullStateAtEpoch": False}, False),
    ],
)
def test_checkpoint_at_epoch_off_warns_that_epoch_full_states_go_too(spec: dict[str, Any], warned: bool) -> None:
    warning = epoch_full_state_warning(spec)
    assert (warning is not None) == warned
    if warned:
        assert warning == (
            "spec.checkpointAtEpoch: false also stops the full state saved at each epoch end "
            "(spec.accelerateFullStateAtEpoch has no effect without it): a restart resumes only from the full "
            "state saved on SIGTERM, else starts over. Set spec.accelerateFullStateAtEpoch: false to say so, "
            "or leave spec.checkpointAtEpoch on"
        )


GPU_DIFFERS = (
    "differs from spec.nprocPerNode ({n}): each process uses one GPU; leave it out (the operator "
    "requests nprocPerNode GPUs) or change spec.nprocPerNode"
)
GPU_ON_CPU = (
    "with spec.device cpu: CPU mode uses no GPU (it empties CUDA_VISIBLE_DEVICES), the GPUs would "
    "be held unused; remove it, or set spec.device: cuda"
)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"nprocPerNode": 8, "pod": {"resources": {"limits": {"nvidia.com/gpu": 4}}}},
            [("spec.pod.resources.limits[nvidia.com/gpu]", "4 " + GPU_DIFFERS.format(n=8))],
        ),
        (
            {
                "nprocPerNode": 2,
                "pod": {"resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}},
            },
            [
                ("spec.pod.resources.limits[nvidia.com/gpu]", "1 " + GPU_DIFFERS.format(n=2)),
                ("spec.pod.resources.requests[nvidia.com/gpu]", "1 " + GPU_DIFFERS.format(n=2)),
            ],
        ),
        (
            {"pod": {"resources": {"requests": {"nvidia.com/gpu": 0}}}},
            [("spec.pod.resources.requests[nvidia.com/gpu]", "0 " + GPU_DIFFERS.format(n=1))],
        ),
        (
            {"device": "cpu", "pod": {"resources": {"limits": {"nvidia.com/gpu": 1}}}},
            [("spec.pod.resources.limits[nvidia.com/gpu]", "1 " + GPU_ON_CPU)],
        ),
    ],
)
def test_a_gpu_request_other_than_nproc_per_node_is_refused(overrides: dict[str, Any], expected) -> None:
    assert problems(minimal(**overrides)) == expected


@pytest.mark.parametrize(
    "overrides",
    [
        {"nprocPerNode": 8, "pod": {"resources": {"limits": {"nvidia.com/gpu": 8}}}},
        {
            "nprocPerNode": 8,
            "pod": {"resources": {"limits": {"nvidia.com/gpu": "8"}, "requests": {"nvidia.com/gpu": 8}}},
        },
        {"device": "cpu", "pod": {"resources": {"limits": {"nvidia.com/gpu": "0", "cpu": 2}}}},
        {"pod": {"resources": {"limits": {"memory": "1Gi"}}}},
    ],
)
def test_a_gpu_request_equal_to_nproc_per_node_is_valid(overrides: dict[str, Any]) -> None:
    parse_spec(minimal(**overrides))


@pytest.mark.parametrize("value", ["0", "30m", "-5", "1e6", ""])
def test_a_bad_collective_timeout_is_refused_naming_the_env_entry(value: str) -> None:
    env = [{"name": "A", "value": "1"}, {"name": "INSTRUCTLAB_NCCL_TIMEOUT_MS", "value": value}]
    assert problems(minimal(pod={"env": env})) == [
        (
            "spec.pod.env[1].value",
            f"INSTRUCTLAB_NCCL_TIMEOUT_MS must be a positive integer (milliseconds), got {value!r}",
        )
    ]


def test_a_collective_timeout_in_milliseconds_or_from_a_source_is_valid() -> None:
    parse_spec(minimal(pod={"env": [{"name": "INSTRUCTLAB_NCCL_TIMEOUT_MS", "value": "3600000"}]}))
    parse_spec(
        minimal(
            pod={
                "env": [
                    {"name": "INSTRUCTLAB_NCCL_TIMEOUT_MS", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}
                ]
            }
        )
    )
