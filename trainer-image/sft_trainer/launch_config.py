"""The training config file (contract.py documents it) -> a validated LauncherConfig and the
instructlab-training TrainingArgs the launcher passes to run_training."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sft_core import checkpoints, contract

from . import cpus
from .errors import ConfigError

log = logging.getLogger("sft_trainer")

# Set by the launcher itself: data is processed once before run_training; callbacks are Python
# objects that cannot travel in JSON.
LAUNCHER_OWNED_ARGS = ("process_data", "callbacks")
# Must stay on: preemption saves through it, and only then is "preempted" told from "finished".
REQUIRED_TRUE_ARGS = ("on_demand_checkpointing",)


class LauncherConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    job_name: str | None = Field(default=None, alias=contract.CONFIG_KEY_JOB_NAME)
    namespace: str | None = Field(default=None, alias=contract.CONFIG_KEY_NAMESPACE)
    num_epochs: int | None = Field(default=None, ge=1, alias=contract.CONFIG_KEY_NUM_EPOCHS)
    full_state_retention: int | None = Field(default=None, ge=1, alias=contract.CONFIG_KEY_RETENTION)
    data_wait_timeout_seconds: float = Field(default=3600, gt=0, alias=contract.CONFIG_KEY_DATA_WAIT_TIMEOUT)
    rendezvous_timeout_seconds: float = Field(default=600, gt=0, alias=contract.CONFIG_KEY_RDZV_TIMEOUT)
    # No progress bar of node 0's data processing moved for this long: kill it and retry (see
    # data_watchdog). Legitimate gaps are seconds (start-up: ~10-60 s on a loaded node).
    data_stall_timeout_seconds: float = Field(default=300, gt=0, alias=contract.CONFIG_KEY_DATA_STALL_TIMEOUT)
    data_processing_attempts: int = Field(default=3, ge=1, alias=contract.CONFIG_KEY_DATA_ATTEMPTS)
    # Checkpoint ownership (sft_core.ownership): without a uid nothing is recorded or checked
    # (a config not rendered by the operator: the launcher's own tests).
    job_uid: str | None = Field(default=None, min_length=1, alias=contract.CONFIG_KEY_JOB_UID)
    training_fields: dict[str, Any] = Field(default_factory=dict, alias=contract.CONFIG_KEY_TRAINING_FIELDS)
    adopt_existing_checkpoints: bool = Field(default=False, alias=contract.CONFIG_KEY_ADOPT_EXISTING)
    # sft: instructlab-training; osft: rhai-innovation-mini-trainer (osft_launch)
    algorithm: Literal["sft", "osft"] = Field(default="sft", alias=contract.CONFIG_KEY_ALGORITHM)
    training_args: dict[str, Any] = Field(alias=contract.CONFIG_KEY_TRAINING_ARGS)
    # Remote sources and the export: the transfer sidecar's (transfer/config.py checks them); the
    # launcher only waits for them (transfer_wait).
    sources: list[Any] = Field(default_factory=list, alias=contract.CONFIG_KEY_SOURCES)
    source_cache_root: str | None = Field(default=None, alias=contract.CONFIG_KEY_SOURCE_CACHE_ROOT)
    export: dict[str, Any] | None = Field(default=None, alias=contract.CONFIG_KEY_EXPORT)


def _field_name(prefix: str, loc: tuple) -> str:
    return ".".join([prefix, *(str(part) for part in loc)] if prefix else [str(part) for part in loc])


def _first_error(error: ValidationError, prefix: str) -> ConfigError:
    first = error.errors()[0]
    return ConfigError(_field_name(prefix, first["loc"]) or prefix, first["msg"])


def parse_config(raw: object) -> LauncherConfig:
    if not isinstance(raw, dict):
        raise ConfigError(contract.ENV_CONFIG_PATH, "the config must be a JSON object")
    try:
        return LauncherConfig.model_validate(raw)
    except ValidationError as error:
        raise _first_error(error, "") from None


def load_config(path: Path) -> LauncherConfig:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(contract.ENV_CONFIG_PATH, f"cannot read {path}: {error}") from None
    try:
        raw = json.loads(text)
    except ValueError as error:
        raise ConfigError(contract.ENV_CONFIG_PATH, f"{path} is not JSON: {error}") from None
    return parse_config(raw)


def training_args_kwargs(
    config: LauncherConfig, known_fields: set[str], *, cpu: bool, usable_cpus: int, flash_attn_installed: bool = True
) -> dict:
    """The kwargs for TrainingArgs: checked against its fields, launcher settings applied.
    flash_attn_installed: whether this image has flash_attn (the CUDA image without a wheelhouse
    has not)."""
    prefix = contract.CONFIG_KEY_TRAINING_ARGS
    args = dict(config.training_args)
    for key in sorted(args):
        if key not in known_fields:
            raise ConfigError(f"{prefix}.{key}", "unknown instructlab-training TrainingArgs field")
        if key in LAUNCHER_OWNED_ARGS:
            raise ConfigError(f"{prefix}.{key}", "is set by the launcher; leave it out")
    for key in REQUIRED_TRUE_ARGS:
        if args.get(key, True) is not True:
            raise ConfigError(f"{prefix}.{key}", "must be true (preemption saves through it)")
        args[key] = True
    if config.num_epochs is not None:
        if args.setdefault("num_epochs", config.num_epochs) != config.num_epochs:
            raise ConfigError(
                f"{prefix}.num_epochs",
                f"{args['num_epochs']} differs from {contract.CONFIG_KEY_NUM_EPOCHS}={config.num_epochs}",
            )
    if "ckpt_output_dir" not in args:
        raise ConfigError(f"{prefix}.ckpt_output_dir", "is required")
    args.setdefault("data_output_dir", str(checkpoints.default_data_dir(Path(args["ckpt_output_dir"]))))
    # Data is processed once by node 0 before run_training (see data_once).
    args["process_data"] = False
    if "data_process_num_cpu_procs" in known_fields:
        args.setdefault("data_process_num_cpu_procs", cpus.data_process_procs(usable_cpus))
    if cpu:
        from . import cpu_mode

        for key, default in cpu_mode.UNSUPPORTED_ARGS.items():
            if args.get(key, default) != default:
                raise ConfigError(
                    f"{prefix}.{key}", f"not supported in CPU mode ({contract.ENV_DEVICE}=cpu); leave it at {default}"
                )
        args.update(cpu_mode.training_args_overrides())
    elif not flash_attn_installed:
        # instructlab-training's default (flash attention on any Ampere or newer GPU) would stop
        # at `import flash_attn`; without it, attention is torch's SDPA on padded batches.
        if args.get("disable_flash_attn") is False:
            raise ConfigError(
                f"{prefix}.disable_flash_attn",
                "is false but this image has no flash_attn (the trainer image's "
                "CUDA flavour installs it only from a wheelhouse): leave it out",
            )
        args["disable_flash_attn"] = True
    return args


def build_training_args(config: LauncherConfig, *, cpu: bool):
    """instructlab-training TrainingArgs, or a ConfigError naming the first bad field."""
    from instructlab.training import TrainingArgs

    flash_attn_installed = cpu or importlib.util.find_spec("flash_attn") is not None
    kwargs = training_args_kwargs(
        config,
        set(TrainingArgs.model_fields),
        cpu=cpu,
        usable_cpus=cpus.usable_cpus(),
        flash_attn_installed=flash_attn_installed,
    )
    if not flash_attn_installed:
        log.info(
            "flash_attn is not installed in this image: training with disable_flash_attn "
            "(SDPA attention, padded batches)"
        )
    try:
        return TrainingArgs(**kwargs)
    except ValidationError as error:
        raise _first_error(error, contract.CONFIG_KEY_TRAINING_ARGS) from None


def check_inputs_exist(training_args) -> None:
    """Fail before touching anything when the data file or a local model path is missing."""
    prefix = contract.CONFIG_KEY_TRAINING_ARGS
    data_path = Path(training_args.data_path)
    if not data_path.is_file():
        raise ConfigError(f"{prefix}.data_path", f"{data_path} does not exist or is not a file")
    model_path = training_args.model_path
    looks_local = model_path.startswith(("/", ".", "~")) or len(model_path.split("/")) != 2
    if looks_local and not Path(model_path).expanduser().is_dir():
        raise ConfigError(f"{prefix}.model_path", f"{model_path} is not a model directory")
