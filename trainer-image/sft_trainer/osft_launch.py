"""The launcher's OSFT side (config ``algorithm: osft``): training_hub osft()'s parameters ->
rhai-innovation-mini-trainer's TrainingArgs, its run_training with our worker entry, and what
tells a finished run from a stopped one.

Everything around it is the SFT launcher's (launcher.run): ownership, the data processed once
by node 0 (instructlab-training's processing, as training_hub's OSFT backend uses it), the
rendezvous checks, retention, the run records, the exit codes and the completion marker.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sft_core import checkpoints, contract

from . import cpus
from .errors import ConfigError, TrainingFailed

log = logging.getLogger("sft_trainer")

ENTRY_DIR = Path(__file__).with_name("osft_entry")


class OsftArgs(BaseModel):
    """The config's trainingArgs for OSFT: training_hub osft() parameters we run (unknown names
    are refused, naming them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: str = Field(min_length=1)
    data_path: str = Field(min_length=1)
    ckpt_output_dir: str = Field(min_length=1)
    data_output_dir: str | None = None
    unfreeze_rank_ratio: float = Field(gt=0, le=1)
    num_epochs: int = Field(default=1, ge=1)
    effective_batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    max_seq_len: int = Field(ge=1)
    max_tokens_per_gpu: int = Field(ge=1)
    warmup_steps: int | None = Field(default=None, ge=0)
    checkpoint_at_epoch: bool | None = None
    save_final_checkpoint: bool | None = None
    target_patterns: list[str] | None = None
    seed: int | None = None
    lr_scheduler: str | None = None
    lr_scheduler_kwargs: dict[str, Any] | None = None
    beta1: float | None = None
    beta2: float | None = None
    eps: float | None = None
    weight_decay: float | None = None
    use_liger: bool | None = None
    data_process_num_cpu_procs: int | None = Field(default=None, ge=1)
    mlflow_tracking_uri: str | None = None
    mlflow_experiment_name: str | None = None
    mlflow_run_name: str | None = None
    wandb_project: str | None = None
    wandb_entity: str | None = None
    wandb_run_name: str | None = None


# training_hub's MiniTrainerOSFTBackend renames (training_hub 0.11.2, algorithms/osft.py).
RENAMES = {
    "use_liger": "use_liger_kernels",
    "warmup_steps": "num_warmup_steps",
    "target_patterns": "osft_target_patterns",
    "unfreeze_rank_ratio": "osft_unfreeze_rank_ratio",
    "model_path": "model_name_or_path",
    "num_epochs": "max_epochs",
    "effective_batch_size": "batch_size",
    "ckpt_output_dir": "output_dir",
}
# Data-processing parameters (our data step's), not mini-trainer's.
DATA_ONLY = ("data_output_dir", "max_seq_len", "data_process_num_cpu_procs")


class OsftPlan(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    args: OsftArgs
    data_args: Any  # instructlab-training TrainingArgs: data_once's input, as for SFT
    trainer_kwargs: dict[str, Any]  # mini-trainer TrainingArgs kwargs


def parse_args(raw: dict[str, Any], *, cpu: bool) -> OsftArgs:
    prefix = contract.CONFIG_KEY_TRAINING_ARGS
    try:
        args = OsftArgs.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join([prefix, *(str(part) for part in first["loc"])])
        message = "unknown OSFT (training_hub osft()) parameter" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(field, message) from None
    if args.max_tokens_per_gpu < args.max_seq_len:
        raise ConfigError(
            f"{prefix}.max_tokens_per_gpu",
            f"{args.max_tokens_per_gpu} is below max_seq_len {args.max_seq_len}: one full sequence must fit on a GPU",
        )
    if cpu and args.use_liger:
        raise ConfigError(
            f"{prefix}.use_liger", f"Liger kernels need CUDA: not in CPU mode ({contract.ENV_DEVICE}=cpu)"
        )
    return args


def trainer_kwargs(args: OsftArgs, data_file: Path) -> dict[str, Any]:
    """mini-trainer TrainingArgs kwargs, as training_hub's backend builds them, with what the
    launcher owns: the processed data, epoch mode, OSFT on, on-demand checkpointing on."""
    values = {name: value for name, value in args.model_dump().items() if value is not None and name not in DATA_ONLY}
    kwargs = {RENAMES.get(name, name): value for name, value in values.items()}
    kwargs.update(
        {"data_path": str(data_file), "osft": True, "training_mode": "epoch", "on_demand_checkpointing": True}
    )
    return kwargs


def build(raw: dict[str, Any], *, cpu: bool, num_epochs: int | None) -> OsftPlan:
    """The plan for an OSFT run, or a ConfigError naming the first bad field."""
    prefix = contract.CONFIG_KEY_TRAINING_ARGS
    args = parse_args(raw, cpu=cpu)
    if num_epochs is not None and args.num_epochs != num_epochs:
        raise ConfigError(
            f"{prefix}.num_epochs", f"{args.num_epochs} differs from {contract.CONFIG_KEY_NUM_EPOCHS}={num_epochs}"
        )
    data_dir = args.data_output_dir or str(checkpoints.default_data_dir(Path(args.ckpt_output_dir)))
    from instructlab.training import TrainingArgs

    try:
        data_args = TrainingArgs(
            model_path=args.model_path,
            data_path=args.data_path,
            ckpt_output_dir=args.ckpt_output_dir,
            data_output_dir=data_dir,
            max_seq_len=args.max_seq_len,
            max_batch_len=args.max_tokens_per_gpu,
            effective_batch_size=args.effective_batch_size,
            learning_rate=args.learning_rate,
            num_epochs=args.num_epochs,
            process_data=False,
            data_process_num_cpu_procs=args.data_process_num_cpu_procs or cpus.data_process_procs(cpus.usable_cpus()),
        )
    except ValidationError as error:
        first = error.errors()[0]
        raise ConfigError(".".join([prefix, *(str(p) for p in first["loc"])]), first["msg"]) from None
    kwargs = trainer_kwargs(args, Path(data_dir) / checkpoints.PROCESSED_DATA_FILE)
    from mini_trainer import TrainingArgs as MiniTrainerArgs

    known = set(MiniTrainerArgs.__dataclass_fields__)
    unknown = sorted(set(kwargs) - known)
    if unknown:  # a mini-trainer rename must fail here, not as a TypeError in the run
        raise ConfigError(f"{prefix}.{unknown[0]}", "not a rhai-innovation-mini-trainer TrainingArgs field")
    return OsftPlan(args=args, data_args=data_args, trainer_kwargs=kwargs)


def worker_log(root: Path, node_rank: int) -> Path:
    """mini-trainer's run_training copies the workers' output there (truncated on restart)."""
    return Path(root) / f"training_log_node{node_rank}.log"


_signals: list[int] = []


@contextlib.contextmanager
def launcher_side(cpu: bool) -> Iterator[None]:
    """Around mini-trainer's run_training in the launcher process: torchrun runs our worker entry
    (osft_entry/train.py: exact resume, CPU mode), and a signal its handler takes is recorded."""
    from mini_trainer import api_train
    from mini_trainer.full_state_checkpoint import FullStateCheckpointer

    trigger = FullStateCheckpointer.__init__.__defaults__
    wanted = f"/dev/shm/{os.environ.get('CHECKPOINT_TRIGGER_FILENAME', 'checkpoint_requested')}"
    if wanted not in (trigger or ()):
        # The launcher's handler and the workers would watch different files: a SIGTERM would
        # never save (mini-trainer was imported before the trigger's name was set).
        raise RuntimeError(f"mini-trainer's trigger file is {trigger}, the workers' {wanted}")
    saved_file = api_train.__file__
    saved_handler = FullStateCheckpointer._handle_signal
    saved_env = {key: os.environ.get(key) for key in ("CUDA_VISIBLE_DEVICES", "TESTING")}
    _signals.clear()

    def recording_handler(self, signum, frame):
        _signals.append(signum)
        saved_handler(self, signum, frame)

    # run_training starts `torchrun <dirname(api_train.__file__)>/train.py ...`.
    api_train.__file__ = str(ENTRY_DIR / "api_train.py")
    FullStateCheckpointer._handle_signal = recording_handler
    if cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif not flash_attn_installed():
        # mini-trainer stops at `import flash_attn` unless TESTING=true, its only meaning in
        # 0.9.0 (setup_model_for_training: SDPA instead). The CUDA image has flash_attn only from
        # a wheelhouse; SFT falls back the same way (disable_flash_attn).
        log.info("flash_attn is not installed in this image: OSFT trains with SDPA attention")
        os.environ["TESTING"] = "true"
    try:
        yield
    finally:
        api_train.__file__ = saved_file
        FullStateCheckpointer._handle_signal = saved_handler
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def flash_attn_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def run_training(torchrun_kwargs: dict[str, Any], plan: OsftPlan) -> None:
    from mini_trainer import TorchrunArgs, TrainingArgs, TrainingMode
    from mini_trainer import run_training as mini_trainer_run

    kwargs = dict(plan.trainer_kwargs)
    kwargs["training_mode"] = TrainingMode(kwargs["training_mode"])
    mini_trainer_run(TorchrunArgs(**torchrun_kwargs), TrainingArgs(**kwargs))


def signal_received() -> bool:
    """Whether mini-trainer's handler took a termination signal during the last run."""
    return bool(_signals)


def check_finished(root: Path, node_rank: int, num_epochs: int) -> None:
    """mini-trainer exits 0 whether it trained every step or none (its skip bug, a save on a
    signal): finished only when this node's metrics log ends at the last step of the last epoch."""
    log_file = Path(root) / f"training_metrics_{node_rank}.jsonl"
    steps = checkpoints.read_metrics_log(log_file).steps
    last = steps[-1] if steps else None
    if last is None or not last.num_epoch_steps:
        raise TrainingFailed(f"mini-trainer exited 0 but {log_file} has no step: training did not run")
    expected = last.num_epoch_steps * num_epochs
    if last.step != expected:
        raise TrainingFailed(
            f"mini-trainer exited 0 after step {last.step} of {expected} (epoch "
            f"{last.epoch + 1} of {num_epochs}) without saving a full state"
        )


def finished_before(tree: checkpoints.CheckpointTree, root: Path, num_epochs: int) -> bool:
    """A run that ended without the completion marker (a crash between the last save and the
    marker): node 0's metrics log ends at the last step of the last epoch and the model it reached
    is saved (a complete hf_format checkpoint at that sample count). mini-trainer has no
    epoch-end full state to tell it by, and would otherwise train again from its last state."""
    steps = checkpoints.read_metrics_log(Path(root) / checkpoints.OSFT_METRICS_LOG_FILE).steps
    last = steps[-1] if steps else None
    if last is None or not last.num_epoch_steps or last.step != last.num_epoch_steps * num_epochs:
        return False
    return any(c.complete and c.samples == last.samples_seen for c in tree.hf_checkpoints)
