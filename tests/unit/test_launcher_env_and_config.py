"""The launcher's env and config parsing: exact results, and errors that name the field."""

from __future__ import annotations

import pytest

from sft_core import contract
from sft_trainer.cpus import cgroup_cpu_limit, usable_cpus
from sft_trainer.errors import ConfigError
from sft_trainer.launch_config import parse_config, training_args_kwargs
from sft_trainer.topology import Topology, topology_from_env

POD_ENV = {
    "PET_NNODES": "2",
    "PET_NPROC_PER_NODE": "4",
    "PET_MASTER_ADDR": "job-0.job",
    "PET_MASTER_PORT": "29500",
    "PET_RDZV_ENDPOINT": "job-0.job:29500",
    "PET_RDZV_ID": "uid-1",
    "SFT_POD_NAME": "my-job-1",
}


def test_topology_from_statefulset_env() -> None:
    topology = topology_from_env(POD_ENV)
    assert topology == Topology(
        nnodes=2,
        nproc_per_node=4,
        node_rank=1,
        rdzv_id="uid-1",
        rdzv_host="job-0.job",
        rdzv_port=29500,
        via_rdzv_endpoint=True,
    )
    assert topology.torchrun_kwargs() == {
        "nnodes": 2,
        "nproc_per_node": 4,
        "node_rank": 1,
        "rdzv_id": "uid-1",
        "rdzv_endpoint": "job-0.job:29500",
    }


def test_topology_falls_back_to_master_addr() -> None:
    env = {k: v for k, v in POD_ENV.items() if k != "PET_RDZV_ENDPOINT"}
    topology = topology_from_env(env)
    assert topology.torchrun_kwargs() == {
        "nnodes": 2,
        "nproc_per_node": 4,
        "node_rank": 1,
        "rdzv_id": "uid-1",
        "master_addr": "job-0.job",
        "master_port": 29500,
    }
    assert topology.endpoint_env == "PET_MASTER_ADDR"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"PET_NNODES": "two"}, "PET_NNODES: must be an integer, got 'two'"),
        ({"PET_NNODES": "0"}, "PET_NNODES: must be >= 1, got 0"),
        ({"PET_NPROC_PER_NODE": ""}, "PET_NPROC_PER_NODE: is not set"),
        ({"SFT_POD_NAME": "job"}, "SFT_POD_NAME: SFT_POD_NAME='job' does not end in '-<ordinal>'"),
        ({"SFT_POD_NAME": "job-2"}, "SFT_POD_NAME: ordinal 2 is not below PET_NNODES=2"),
        ({"PET_RDZV_ID": ""}, "PET_RDZV_ID: is not set"),
        ({"PET_RDZV_ENDPOINT": "job-0.job"}, "PET_RDZV_ENDPOINT: must be <host>:<port>, got 'job-0.job'"),
        ({"PET_RDZV_ENDPOINT": "", "PET_MASTER_ADDR": ""}, "PET_RDZV_ENDPOINT: neither it nor PET_MASTER_ADDR is set"),
    ],
)
def test_topology_errors_name_the_variable(change: dict, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        topology_from_env({**POD_ENV, **change})
    assert str(raised.value) == message
    assert raised.value.exit_code == contract.EXIT_BAD_CONFIG


CONFIG = {
    "jobName": "j",
    "namespace": "n",
    "numEpochs": 3,
    "fullStateRetention": 2,
    "trainingArgs": {
        "model_path": "/m",
        "data_path": "/d.jsonl",
        "ckpt_output_dir": "/checkpoints/run",
        "max_seq_len": 64,
    },
}
FIELDS = {
    "model_path",
    "data_path",
    "ckpt_output_dir",
    "data_output_dir",
    "max_seq_len",
    "num_epochs",
    "process_data",
    "callbacks",
    "on_demand_checkpointing",
    "disable_flash_attn",
    "data_process_num_cpu_procs",
}


def test_training_args_kwargs_applies_launcher_settings() -> None:
    config = parse_config(CONFIG)
    assert (
        config.num_epochs,
        config.full_state_retention,
        config.data_wait_timeout_seconds,
        config.rendezvous_timeout_seconds,
    ) == (3, 2, 3600, 600)
    assert training_args_kwargs(config, FIELDS, cpu=False, usable_cpus=4) == {
        "model_path": "/m",
        "data_path": "/d.jsonl",
        "ckpt_output_dir": "/checkpoints/run",
        "max_seq_len": 64,
        "num_epochs": 3,
        "on_demand_checkpointing": True,
        "data_output_dir": "/checkpoints/run/data",
        "process_data": False,
        "data_process_num_cpu_procs": 4,
    }
    cpu = training_args_kwargs(config, FIELDS, cpu=True, usable_cpus=4)
    assert cpu["disable_flash_attn"] is True
    with pytest.raises(ConfigError) as raised:
        training_args_kwargs(
            parse_config(_with_args(validation_split=0.1)), FIELDS | {"validation_split"}, cpu=True, usable_cpus=4
        )
    assert str(raised.value) == (
        "trainingArgs.validation_split: not supported in CPU mode (SFT_DEVICE=cpu); leave it at 0.0"
    )


def _with_args(**args) -> dict:
    return {**CONFIG, "trainingArgs": {**CONFIG["trainingArgs"], **args}}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (_with_args(learning_rat=1), "trainingArgs.learning_rat: unknown instructlab-training TrainingArgs field"),
        (_with_args(process_data=True), "trainingArgs.process_data: is set by the launcher; leave it out"),
        (
            _with_args(on_demand_checkpointing=False),
            "trainingArgs.on_demand_checkpointing: must be true (preemption saves through it)",
        ),
        (_with_args(num_epochs=2), "trainingArgs.num_epochs: 2 differs from numEpochs=3"),
        ({**CONFIG, "trainingArgs": {"model_path": "/m"}}, "trainingArgs.ckpt_output_dir: is required"),
    ],
)
def test_training_args_errors_name_the_field(config: dict, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        training_args_kwargs(parse_config(config), FIELDS, cpu=False, usable_cpus=4)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("usable_cpus", "given", "expected"),
    [
        (2, None, 2),  # a small pod: one worker per CPU, not upstream's 16
        (64, None, 16),  # never above upstream's default
        (2, 24, 24),  # the user's own choice (extraArgs) stands
    ],
)
def test_data_processing_pool_fits_the_pod(usable_cpus: int, given: int | None, expected: int) -> None:
    config = parse_config(_with_args(data_process_num_cpu_procs=given) if given else CONFIG)
    kwargs = training_args_kwargs(config, FIELDS, cpu=False, usable_cpus=usable_cpus)
    assert kwargs["data_process_num_cpu_procs"] == expected


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("max 100000\n", None),
        ("200000 100000\n", 2),
        ("150000 100000", 2),
        ("50000 100000", 1),
        ("", None),
        ("garbage here", None),
        ("0 100000", None),
    ],
)
def test_cgroup_cpu_limit(cpu_max: str, expected: int | None) -> None:
    assert cgroup_cpu_limit(cpu_max) == expected


def test_usable_cpus_takes_the_lower_of_affinity_and_cgroup(tmp_path) -> None:
    import os

    affinity = len(os.sched_getaffinity(0))
    limited = tmp_path / "cpu.max"
    limited.write_text("100000 100000\n")
    assert usable_cpus(limited) == 1
    limited.write_text(f"{(affinity + 8) * 100000} 100000\n")
    assert usable_cpus(limited) == affinity
    assert usable_cpus(tmp_path / "missing") == affinity


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({**CONFIG, "numEpoch": 3}, "numEpoch: Extra inputs are not permitted"),
        ({**CONFIG, "fullStateRetention": 0}, "fullStateRetention: Input should be greater than or equal to 1"),
        ({k: v for k, v in CONFIG.items() if k != "trainingArgs"}, "trainingArgs: Field required"),
        ([1], "SFT_CONFIG: the config must be a JSON object"),
    ],
)
def test_config_errors_name_the_key(config, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(config)
    assert str(raised.value) == message


def test_training_args_validation_error_names_nested_field() -> None:
    pytest.importorskip("instructlab.training")
    from sft_trainer.launch_config import build_training_args

    config = parse_config(_with_args(max_batch_len=64, effective_batch_size=4, learning_rate="fast"))
    with pytest.raises(ConfigError) as raised:
        build_training_args(config, cpu=False)
    assert str(raised.value).startswith("trainingArgs.learning_rate: ")


def test_gpu_mode_never_imports_cpu_mode() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from sft_trainer import launcher, launch_config\n"
        "config = launch_config.parse_config(" + repr(CONFIG) + ")\n"
        "kwargs = launch_config.training_args_kwargs(config, " + repr(FIELDS) + ", cpu=False, usable_cpus=4)\n"
        "assert 'disable_flash_attn' not in kwargs, kwargs\n"
        "assert 'sft_trainer.cpu_mode' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_cpu_mode_launcher_side_restores_main_ds() -> None:
    pytest.importorskip("instructlab.training")
    import os

    from instructlab.training import main_ds

    from sft_trainer import cpu_mode

    original = main_ds.__file__
    accelerate_env = os.environ.get("ACCELERATE_USE_CPU")
    with cpu_mode.launcher_side():
        assert main_ds.__file__ == str(cpu_mode.WORKER_ENTRY)
        assert os.environ["ACCELERATE_USE_CPU"] == "1"
    assert main_ds.__file__ == original
    assert os.environ.get("ACCELERATE_USE_CPU") == accelerate_env


def test_the_operators_rendered_config_is_accepted() -> None:
    """The contract end to end: models.training_config (what render.py mounts) -> TrainingArgs."""
    pytest.importorskip("instructlab.training")
    from sft_models.models import parse_spec
    from sft_trainer.launch_config import build_training_args

    spec = parse_spec(
        {
            "modelPath": "/models/m",
            "dataPath": "/data/d.jsonl",
            "numEpochs": 2,
            "effectiveBatchSize": 8,
            "learningRate": 1e-5,
            "maxSeqLen": 512,
            "nnodes": 2,
            "fullStateRetention": 2,
            "checkpoints": {"claim": {"size": "10Gi"}, "path": "runs/a"},
            "extraArgs": {"keep_last_checkpoint_only": True},
        }
    )
    config = parse_config(spec.training_config("job", "ns"))
    args = build_training_args(config, cpu=False)
    assert (config.num_epochs, config.full_state_retention) == (2, 2)
    assert (args.ckpt_output_dir, args.data_output_dir, args.num_epochs) == (
        "/checkpoints/runs/a",
        "/checkpoints/runs/a/data",
        2,
    )
    assert (
        args.process_data,
        args.on_demand_checkpointing,
        args.keep_last_checkpoint_only,
        args.fsdp_options.sharding_strategy.value,
    ) == (False, True, True, "FULL_SHARD")
