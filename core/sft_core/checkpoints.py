"""The checkpoint volume's layout: the one module that knows it.

Read side (the status reporter, the launcher): ``scan_checkpoints`` and ``read_metrics_log``.
Write side (the launcher only): our markers, atomic writes, the run log, retention.

What instructlab-training 0.16.2 writes under ``ckpt_output_dir``::

    hf_format/samples_<N>/            model for serving (or hf_format/last_epoch/ when
                                      keep_last_checkpoint_only); N = samples seen
    full_state/epoch_<E>/             accelerate state for resume; training_metadata.json is a
                                      torch pickle {current_epoch, samples_seen[, global_step]}
                                      written last, so its presence means "complete"
    training_params_and_metrics_global0.jsonl   appended across restarts
    full_logs_global<R>.log           truncated on restart

What rhai-innovation-mini-trainer 0.9.0 (spec.algorithm osft) writes there instead::

    hf_format/samples_<N>.0/          model for serving (N: samples seen, written as a float)
    full_state_checkpoints/step_<S>/  only on a signal (on-demand): DCP model shards, one
                                      optimizer and RNG file per rank, training_state.pt (a torch
                                      pickle {step, epoch, total_samples_accumulated, ...},
                                      written by rank 0 after its own shards): complete once it
                                      exists. S = optimizer steps since the start, all epochs
    training_metrics_<node_rank>.jsonl  one line per step ({step, epoch, steps_per_epoch, loss,
                                      lr, total_samples_accumulated, samples_per_second, ...}),
                                      appended across restarts; node 0's is the metrics log
    training_log_node<R>.log          the workers' output, truncated on restart

What our launcher adds, all under ``sft-operator/``::

    data/data.jsonl                   the processed data (trainingArgs.data_output_dir, which
                                      defaults to here); node 0 processes it once
    sft-operator/DATA_READY           JSON DataReadyMarker, written after data.jsonl is complete
    sft-operator/runs.jsonl           one RunRecord per training start on node 0
    sft-operator/COMPLETED            JSON CompletionMarker, written after success
    sft-operator/OWNER                JSON ownership.OwnerRecord: the jobs that owned the
                                      directory (uid, training-fields hash, since when); node
                                      0 writes it before anything else
    sft-operator/set-aside/           incomplete or foreign full_state entries moved out of the
                                      way of resume (never deleted by us)

Pure and light: no torch import. training_metadata.json is read with a restricted unpickler
that accepts only plain data, so the reporter needs no torch.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sft_core.wire import MAX_API_INT

# --- Layout -----------------------------------------------------------------------------------
HF_FORMAT_DIR = "hf_format"
HF_LAST_EPOCH_NAME = "last_epoch"
FULL_STATE_DIR = "full_state"
TRAINING_METADATA_FILE = "training_metadata.json"
METRICS_LOG_FILE = "training_params_and_metrics_global0.jsonl"
OSFT_FULL_STATE_DIR = "full_state_checkpoints"
OSFT_STATE_FILE = "training_state.pt"
OSFT_METRICS_LOG_FILE = "training_metrics_0.jsonl"
OPERATOR_DIR = "sft-operator"
DEFAULT_DATA_DIR = "data"  # the operator's default data_output_dir, relative to the root
PROCESSED_DATA_FILE = "data.jsonl"
DATA_READY_FILE = f"{OPERATOR_DIR}/DATA_READY"
RUNS_LOG_FILE = f"{OPERATOR_DIR}/runs.jsonl"
COMPLETION_MARKER_FILE = f"{OPERATOR_DIR}/COMPLETED"
OWNER_FILE = f"{OPERATOR_DIR}/OWNER"
SET_ASIDE_DIR = f"{OPERATOR_DIR}/set-aside"

# mini-trainer names a checkpoint after a float sample count: samples_48.0
_SAMPLES_DIR = re.compile(r"^samples_(\d+)(?:\.0)?$")
_EPOCH_DIR = re.compile(r"^epoch_(\d+)$")
_STEP_DIR = re.compile(r"^step_(\d+)$")


def _step_number(name: str) -> int:
    """S of a step_S directory name (the caller matched _STEP_DIR already); -1 otherwise."""
    match = _STEP_DIR.match(name)
    return int(match.group(1)) if match else -1


_HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

# Keys our launcher adds to a mid-epoch training_metadata.json when it makes resume exact.
META_STEPS_INTO_EPOCH = "sft_steps_into_epoch"
META_ORIGINAL_GLOBAL_STEP = "sft_original_global_step"
META_STEP_APPLIED = "sft_step_applied"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


# --- Models -----------------------------------------------------------------------------------
class HfCheckpoint(_Frozen):
    name: str
    samples: int | None  # None for last_epoch
    epoch: int | None  # derived: exact from a full state with the same samples, else arithmetic
    mtime: float
    complete: bool  # config.json and model weights present


class FullStateMetadata(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    current_epoch: int
    samples_seen: int
    global_step: int | None = None  # present only in on-demand (mid-epoch) saves
    steps_into_epoch: int | None = Field(default=None, alias=META_STEPS_INTO_EPOCH)
    original_global_step: int | None = Field(default=None, alias=META_ORIGINAL_GLOBAL_STEP)
    step_applied: bool | None = Field(default=None, alias=META_STEP_APPLIED)

    @property
    def mid_epoch(self) -> bool:
        return self.global_step is not None

    @property
    def normalized(self) -> bool:
        """Our launcher already rewrote it so that upstream resume is exact."""
        return self.steps_into_epoch is not None

    def to_pickle_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class FullState(_Frozen):
    name: str
    epoch: int
    complete: bool  # training_metadata.json (OSFT: training_state.pt) present and readable
    mtime: float
    metadata: FullStateMetadata | None
    directory: str = FULL_STATE_DIR  # OSFT_FULL_STATE_DIR for mini-trainer's states

    @property
    def path(self) -> str:
        """Relative to the checkpoint root."""
        return f"{self.directory}/{self.name}"

    @property
    def kept_in_place(self) -> bool:
        """Complete and never overwritten: an epoch-end state, or any of mini-trainer's (each
        save has its own step_<S> directory). What retention counts."""
        return self.stable or (self.complete and self.directory == OSFT_FULL_STATE_DIR)

    @property
    def stable(self) -> bool:
        """Complete and saved at an epoch end: nothing will overwrite it in place."""
        return self.complete and self.metadata is not None and not self.metadata.mid_epoch


class CompletionMarker(_Frozen):
    finished_at: datetime
    num_epochs: int
    samples_seen: int
    final_checkpoint: str | None  # path relative to the checkpoint root


class DataReadyMarker(_Frozen):
    fingerprint: str  # of the inputs (data file, model, max_seq_len, ...): stale when they change
    data_dir: str  # where data.jsonl is (trainingArgs.data_output_dir)
    num_samples: int
    created_at: datetime


class RunRecord(_Frozen):
    """What node 0's launcher knew when it started a training run (appended to runs.jsonl)."""

    started_at: datetime
    start_epoch: int
    steps_into_epoch: int  # batches of start_epoch the run skips (already trained)
    start_samples_seen: int
    metrics_log_offset: int  # size of the metrics log at start: this run's lines follow it
    resumed_from: str | None  # full_state entry name, None on a fresh start


class CheckpointTree(_Frozen):
    root: str
    hf_checkpoints: list[HfCheckpoint]  # by samples, last_epoch last
    full_states: list[FullState]  # by epoch (OSFT: by step)
    stray_full_state_entries: list[str]  # names that would crash upstream's resume
    completion: CompletionMarker | None
    data_ready: DataReadyMarker | None
    samples_per_epoch: int | None  # from the metrics log's totals line

    @property
    def complete_full_states(self) -> list[FullState]:
        return [state for state in self.full_states if state.complete]

    @property
    def incomplete_full_states(self) -> list[FullState]:
        return [state for state in self.full_states if not state.complete]

    @property
    def latest_full_state(self) -> FullState | None:
        """The complete full state upstream's resume would load (highest epoch)."""
        complete = self.complete_full_states
        return complete[-1] if complete else None

    @property
    def latest_hf_checkpoint(self) -> HfCheckpoint | None:
        complete = [ckpt for ckpt in self.hf_checkpoints if ckpt.complete]
        return complete[-1] if complete else None


# --- Metrics log records ----------------------------------------------------------------------
class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", protected_namespaces=())

    timestamp: str | None = None


class HparamsRecord(_Record):
    """main_ds's arguments, logged once per run start."""

    model_name_or_path: str | None = None
    output_dir: str | None = None
    num_epochs: int | None = None
    effective_batch_size: int | None = None
    learning_rate: float | None = None
    seed: int | None = None


class TotalsRecord(_Record):
    """Logged once per run after the data loader is built."""

    total_samples: int
    num_batches: int
    num_gpus: int | None = None
    effective_batch_size: int | None = None
    avg_sample_len: float | None = None


class StepRecord(_Record):
    """One optimizer step. ``step`` restarts at 1 in every run; samples_seen does not."""

    epoch: int
    step: int
    samples_seen: int
    avg_loss: float | None = None
    lr: float | None = None
    overall_throughput: float | None = None
    batch_size: int | None = None
    num_epoch_steps: int | None = None
    total_samples: int | None = None


class ValidationRecord(_Record):
    """A validation loss, logged right after the step line it follows (``validation_split > 0``:
    every ``validation_frequency`` steps): ``{"val_loss", "val_num_tokens", "step"}``."""

    val_loss: float
    step: int | None = None
    val_num_tokens: int | None = None
    # Not in the line: the samples_seen of the step line just before it with the same step, when
    # the same read has it (read_metrics_log); None otherwise.
    samples_seen: int | None = None


class MetricsLog(_Frozen):
    hparams: list[HparamsRecord]
    totals: list[TotalsRecord]
    steps: list[StepRecord]
    validations: list[ValidationRecord]
    other: list[dict[str, Any]]  # lines of no kind above
    skipped_lines: int  # torn or non-JSON lines (a crash mid-write)
    end_offset: int  # byte offset after the last complete line: pass it back to read on


def read_metrics_log(path: Path, offset: int = 0) -> MetricsLog:
    """Typed records from complete lines at or after byte ``offset``; a missing file is empty."""
    hparams: list[HparamsRecord] = []
    totals: list[TotalsRecord] = []
    steps: list[StepRecord] = []
    validations: list[ValidationRecord] = []
    other: list[dict[str, Any]] = []
    skipped = 0
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        data = b""
    # A line without its newline is still being written: leave it for the next read.
    last_newline = data.rfind(b"\n")
    complete = data[:last_newline] if last_newline >= 0 else b""
    end_offset = offset + last_newline + 1
    for raw in complete.split(b"\n"):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            skipped += 1
            continue
        if not isinstance(line, dict):
            skipped += 1
            continue
        try:
            if "epoch" in line and "step" in line and "samples_seen" in line:
                steps.append(StepRecord.model_validate(line))
            elif (osft := _osft_step(line)) is not None:
                steps.append(StepRecord.model_validate(osft))
            elif "num_batches" in line and "total_samples" in line:
                totals.append(TotalsRecord.model_validate(line))
            elif "model_name_or_path" in line:
                hparams.append(HparamsRecord.model_validate(line))
            elif "val_loss" in line:
                record = ValidationRecord.model_validate(line)
                if steps and record.step is not None and steps[-1].step == record.step:
                    record = record.model_copy(update={"samples_seen": steps[-1].samples_seen})
                validations.append(record)
            else:
                other.append(line)
        except ValidationError:
            skipped += 1
    return MetricsLog(
        hparams=hparams,
        totals=totals,
        steps=steps,
        validations=validations,
        other=other,
        skipped_lines=skipped,
        end_offset=end_offset,
    )


def metrics_log_path(root: Path) -> Path:
    """instructlab-training's metrics log, or mini-trainer's node-0 log once that exists."""
    osft = Path(root) / OSFT_METRICS_LOG_FILE
    return osft if osft.exists() else Path(root) / METRICS_LOG_FILE


def _osft_step(line: dict[str, Any]) -> dict[str, Any] | None:
    """A mini-trainer metrics line as a StepRecord's fields (its epoch is 0-based like ours)."""
    if not ("loss" in line and "step" in line and "epoch" in line and "total_samples_accumulated" in line):
        return None
    samples = line["total_samples_accumulated"]
    if not isinstance(samples, (int, float)) or isinstance(samples, bool) or samples != int(samples):
        return None
    return {
        "epoch": line["epoch"],
        "step": line["step"],
        "samples_seen": int(samples),
        "avg_loss": line["loss"],
        "lr": line.get("lr"),
        "overall_throughput": line.get("samples_per_second"),
        "batch_size": line.get("num_samples"),
        "num_epoch_steps": line.get("steps_per_epoch"),
        "timestamp": line.get("timestamp"),
    }


def _first_samples_per_epoch(path: Path, max_bytes: int = 1 << 20) -> int | None:
    # The totals line comes right after the first hparams line: reading the head is enough.
    try:
        with open(path, "rb") as handle:
            head = handle.read(max_bytes)
    except FileNotFoundError:
        return None
    for raw in head.split(b"\n"):
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and "num_batches" in line and "total_samples" in line:
            return int(line["total_samples"])
    return None


# --- training_metadata.json (a torch pickle) without torch ------------------------------------
class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:  # refuses every global
        raise pickle.UnpicklingError(f"refusing {module}.{name}: only plain data is expected")


def read_training_metadata(path: Path) -> FullStateMetadata | None:
    """The metadata dict of a full state, or None when missing, truncated or not plain data."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [name for name in archive.namelist() if name.endswith("/data.pkl")]
            if len(names) != 1:
                return None
            payload = archive.read(names[0])
        data = _PlainDataUnpickler(io.BytesIO(payload)).load()
        return FullStateMetadata.model_validate(data)
    except (OSError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, ValidationError):
        return None


def read_osft_state(path: Path) -> FullStateMetadata | None:
    """mini-trainer's training_state.pt as our metadata (every save is mid-epoch: global_step
    set), or None when missing, truncated or not plain data."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [name for name in archive.namelist() if name.endswith("/data.pkl")]
            if len(names) != 1:
                return None
            payload = archive.read(names[0])
        data = _PlainDataUnpickler(io.BytesIO(payload)).load()
        samples = data["total_samples_accumulated"]
        return FullStateMetadata(current_epoch=data["epoch"], samples_seen=int(samples), global_step=data["step"])
    except (
        OSError,
        zipfile.BadZipFile,
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        ValidationError,
    ):
        return None


# --- Scan -------------------------------------------------------------------------------------
def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def epoch_of_samples(samples: int, samples_per_epoch: int | None) -> int | None:
    """Epoch index (0-based) in which the step reaching ``samples`` ran; every epoch sees each
    training sample once, so epoch e ends at (e + 1) * samples_per_epoch."""
    if not samples_per_epoch or samples <= 0:
        return None
    return math.ceil(samples / samples_per_epoch) - 1


def _scan_full_states(root: Path) -> tuple[list[FullState], list[str]]:
    states: list[FullState] = []
    stray: list[str] = []
    base = root / FULL_STATE_DIR
    if not base.is_dir():
        return _scan_osft_full_states(root), stray
    for entry in sorted(base.iterdir()):
        match = _EPOCH_DIR.match(entry.name)
        if not match or not entry.is_dir():
            stray.append(entry.name)
            continue
        metadata_path = entry / TRAINING_METADATA_FILE
        metadata = read_training_metadata(metadata_path) if metadata_path.exists() else None
        states.append(
            FullState(
                name=entry.name,
                epoch=int(match.group(1)),
                complete=metadata is not None,
                mtime=_mtime(metadata_path if metadata is not None else entry),
                metadata=metadata,
            )
        )
    states.sort(key=lambda state: state.epoch)
    return states + _scan_osft_full_states(root), stray


def _scan_osft_full_states(root: Path) -> list[FullState]:
    base = root / OSFT_FULL_STATE_DIR
    if not base.is_dir():
        return []
    states = []
    for entry in base.iterdir():
        match = _STEP_DIR.match(entry.name)
        if not match or not entry.is_dir():
            continue  # mini-trainer's resume looks only at step_<S> directories
        state_path = entry / OSFT_STATE_FILE
        metadata = read_osft_state(state_path) if state_path.exists() else None
        states.append(
            FullState(
                name=entry.name,
                epoch=metadata.current_epoch if metadata else 0,
                complete=metadata is not None,
                mtime=_mtime(state_path if metadata is not None else entry),
                metadata=metadata,
                directory=OSFT_FULL_STATE_DIR,
            )
        )
    # By step, as mini-trainer picks the newest (an incomplete one sorts by its name's step).
    states.sort(key=lambda state: _step_number(state.name))
    return states


def _scan_hf(root: Path, full_states: list[FullState], samples_per_epoch: int | None) -> list[HfCheckpoint]:
    base = root / HF_FORMAT_DIR
    if not base.is_dir():
        return []
    epoch_by_samples = {
        state.metadata.samples_seen: state.metadata.current_epoch for state in full_states if state.metadata is not None
    }
    checkpoints = []
    for entry in base.iterdir():
        if not entry.is_dir():
            continue
        match = _SAMPLES_DIR.match(entry.name)
        if match is None and entry.name != HF_LAST_EPOCH_NAME:
            continue
        samples = int(match.group(1)) if match else None
        if samples is not None and samples > MAX_API_INT:
            continue  # not a count a run reaches, and no status could hold it (wire.MAX_API_INT)
        epoch = None
        if samples is not None:
            epoch = epoch_by_samples.get(samples, epoch_of_samples(samples, samples_per_epoch))
        complete = (entry / "config.json").exists() and any((entry / name).exists() for name in _HF_WEIGHT_FILES)
        checkpoints.append(
            HfCheckpoint(name=entry.name, samples=samples, epoch=epoch, mtime=_mtime(entry), complete=complete)
        )
    checkpoints.sort(key=lambda ckpt: (ckpt.samples is None, ckpt.samples or 0, ckpt.name))
    return checkpoints


_Model = TypeVar("_Model", bound=BaseModel)


def _read_json_model(path: Path, model: type[_Model]) -> _Model | None:
    try:
        return model.model_validate_json(path.read_bytes())
    except (FileNotFoundError, ValidationError):
        return None


def scan_checkpoints(path: Path) -> CheckpointTree:
    """Everything on the checkpoint volume worth knowing, from directory listings and small
    files only (never a model or optimizer file)."""
    root = Path(path)
    full_states, stray = _scan_full_states(root)
    samples_per_epoch = _first_samples_per_epoch(root / METRICS_LOG_FILE)
    data_ready = _read_json_model(root / DATA_READY_FILE, DataReadyMarker)
    if samples_per_epoch is None and (root / OSFT_METRICS_LOG_FILE).exists() and data_ready is not None:
        # mini-trainer logs no totals line; each epoch trains every processed sample once.
        samples_per_epoch = data_ready.num_samples
    return CheckpointTree(
        root=str(root),
        hf_checkpoints=_scan_hf(root, full_states, samples_per_epoch),
        full_states=full_states,
        stray_full_state_entries=stray,
        completion=_read_json_model(root / COMPLETION_MARKER_FILE, CompletionMarker),
        data_ready=data_ready,
        samples_per_epoch=samples_per_epoch,
    )


# --- Write side -------------------------------------------------------------------------------
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never a torn one (write, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def default_data_dir(root: Path) -> Path:
    return Path(root) / DEFAULT_DATA_DIR


def write_data_ready(root: Path, marker: DataReadyMarker) -> None:
    atomic_write_bytes(Path(root) / DATA_READY_FILE, marker.model_dump_json().encode())


def clear_data_ready(root: Path) -> None:
    (Path(root) / DATA_READY_FILE).unlink(missing_ok=True)


def read_data_ready(root: Path) -> DataReadyMarker | None:
    return _read_json_model(Path(root) / DATA_READY_FILE, DataReadyMarker)


def write_completion_marker(root: Path, marker: CompletionMarker) -> None:
    atomic_write_bytes(Path(root) / COMPLETION_MARKER_FILE, marker.model_dump_json().encode())


def read_completion_marker(root: Path) -> CompletionMarker | None:
    return _read_json_model(Path(root) / COMPLETION_MARKER_FILE, CompletionMarker)


def append_run_record(root: Path, record: RunRecord) -> None:
    path = Path(root) / RUNS_LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(record.model_dump_json() + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_run_records(root: Path) -> list[RunRecord]:
    """All run records; a torn last line (crash mid-append) is ignored."""
    try:
        lines = (Path(root) / RUNS_LOG_FILE).read_text().splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            records.append(RunRecord.model_validate_json(line))
        except ValidationError:
            continue
    return records


def full_states_to_prune(tree: CheckpointTree, keep: int) -> list[FullState]:
    """The complete full states retention may delete, keeping the newest ``keep`` stable ones.

    A state is deleted only when ``keep`` newer stable states exist, i.e. only after a newer one
    is complete. Incomplete states (maybe being written) are never candidates, and mid-epoch
    states do not count towards ``keep``: upstream overwrites them in place at the epoch's end.
    """
    if keep < 1:
        raise ValueError(f"fullStateRetention must be >= 1, got {keep}")
    kept = [index for index, state in enumerate(tree.full_states) if state.kept_in_place]
    if len(kept) <= keep:
        return []
    # full_states is in save order (epochs; OSFT: steps): everything complete before the oldest kept.
    oldest_kept = kept[-keep]
    return [state for state in tree.full_states[:oldest_kept] if state.complete]


def full_state_written_at(root: Path, state: FullState) -> float:
    """When upstream last wrote the state: the newest mtime of its top-level entries other than
    training_metadata.json, which our resume rewrites (normalize_mid_epoch) without writing the
    state; the metadata's own mtime when nothing else is there."""
    base = Path(root) / state.path
    try:
        times = [entry.stat().st_mtime for entry in base.iterdir() if entry.name != TRAINING_METADATA_FILE]
    except FileNotFoundError:
        times = []
    return max(times) if times else state.mtime


def prune_full_states(root: Path, keep: int, may_delete: Callable[[FullState], bool] | None = None) -> list[str]:
    """Delete what ``full_states_to_prune`` allows and ``may_delete(state)`` (None: all) accepts
    (retention's owner check: only states this job's lineage wrote); returns the deleted names."""
    tree = scan_checkpoints(root)
    deleted = []
    for state in full_states_to_prune(tree, keep):
        if may_delete is not None and not may_delete(state):
            continue
        target = Path(root) / state.path
        # The metadata goes first: a crash mid-delete leaves an incomplete state, which resume
        # skips (it is set aside), never a "complete" one with missing files.
        (target / TRAINING_METADATA_FILE).unlink(missing_ok=True)
        (target / OSFT_STATE_FILE).unlink(missing_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        deleted.append(state.name)
    return deleted


def set_aside(root: Path, names: list[str], *, now: datetime, directory: str = FULL_STATE_DIR) -> list[str]:
    """Move full_state (or ``directory``'s) entries out of the way of upstream's resume, keeping
    them on the volume.

    Only call this while no training process runs (incomplete states may be being written).
    Returns the new paths relative to ``root``.
    """
    moved = []
    stamp = now.strftime("%Y%m%dT%H%M%S")
    for name in names:
        source = Path(root) / directory / name
        target = Path(root) / SET_ASIDE_DIR / f"{name}-{stamp}"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        moved.append(str(target.relative_to(root)))
    return moved
