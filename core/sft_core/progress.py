"""Training progress as facts read from the checkpoint volume: pure, no I/O.

The reporter sidecar scans the volume (checkpoints.scan_checkpoints, read_metrics_log) and calls
``summarize_progress``; the operator copies the result into ``status.progress``. Nothing here
reads the clock: every time in the summary comes from the volume itself (a step's timestamp, a
checkpoint's mtime), so re-summarizing an unchanged volume yields an identical summary and the
reporter publishes nothing.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ConfigDict, Field

from sft_core.checkpoints import (
    HF_FORMAT_DIR,
    CheckpointTree,
    RunRecord,
    StepRecord,
    TotalsRecord,
    ValidationRecord,
)
from sft_core.sources import DownloadState, TransferState
from sft_core.untrusted import Checked, DroppedValue, preview, validate_dropping
from sft_core.wire import MAX_API_INT, ApiModel, Count, DateTime, Finite, Flag, rfc3339

# The loss history's bound, whatever the run's length: at most this many points in the summary
# (and so in the ConfigMap and the status), of which at most MAX_VALIDATION_POINTS carry only a
# validation loss.
MAX_LOSS_HISTORY = 256
MAX_VALIDATION_POINTS = 64
# The status lists the newest checkpoints only: a run saving every few samples for many epochs
# must not outgrow the ConfigMap (1 MiB) or make every status patch huge.
MAX_CHECKPOINTS = 512
# Bounds of the strings the summary holds (the CRD carries them): a directory name (the file
# systems' 255 bytes), a path relative to the checkpoint directory, a decimal or display string.
MAX_NAME_LENGTH = 255
MAX_PATH_LENGTH = 512
MAX_DECIMAL_LENGTH = 32
MAX_DISPLAY_LENGTH = 48


class _Api(ApiModel):
    # A newer reporter may publish fields this operator does not know yet: ignored, not refused.
    model_config = ConfigDict(extra="ignore")


class Stage(str, enum.Enum):
    DOWNLOADING = "Downloading"  # the transfer sidecar fetches the remote sources (sources.py)
    INITIALIZING = "Initializing"  # pods starting, model loading
    PROCESSING_DATA = "ProcessingData"
    TRAINING = "Training"
    SAVING = "Saving"  # a checkpoint is being written
    COMPLETED = "Completed"  # the launcher's completion marker exists


class CheckpointInfo(_Api):
    """A complete hf_format checkpoint: a model ready to serve."""

    name: str = Field(max_length=MAX_NAME_LENGTH)
    path: str = Field(max_length=MAX_PATH_LENGTH, description="Relative to the job's checkpoint directory.")
    samples: Count | None = Field(default=None, description="Samples seen when it was saved.")
    epoch: Count | None = Field(default=None, description="1-based epoch it was saved in.")
    time: DateTime


class FullStateInfo(_Api):
    """The newest complete full_state (optimizer, scheduler, RNG): what a restart resumes from."""

    name: str = Field(max_length=MAX_NAME_LENGTH)
    path: str = Field(max_length=MAX_PATH_LENGTH)
    epoch: Count = Field(description="1-based epoch the state was saved in.")
    samples: Count | None = None
    mid_epoch: Flag = Field(default=False, description="Saved on demand (preemption), not at an epoch end.")
    time: DateTime


class CheckpointAdoption(_Api):
    """This job continues checkpoints another job wrote (the directory's owner record)."""

    previous_uid: str | None = Field(
        default=None, max_length=128, description="The uid of the job that owned them (unset: unrecorded)."
    )
    previous_job: str | None = Field(default=None, max_length=320, description="That job's namespace/name.")
    reason: str = Field(
        max_length=64,
        description="SameTrainingFields, AdoptExisting (spec.checkpoints.adoptExisting) "
        "or Unrecorded (written before owners were recorded).",
    )
    message: str = Field(max_length=1024)
    time: DateTime = Field(description="When it was adopted.")


class SourceDownload(_Api):
    """A remote source (spec.modelPath, spec.dataPath) and how far its one download is."""

    field: str = Field(max_length=64, description="The spec field, e.g. spec.modelPath.")
    source: str = Field(max_length=2048)
    state: str = Field(max_length=32, description="Pending, Downloading, Done or Failed.")
    bytes_done: Count = 0
    bytes_total: Count | None = None
    files: Count | None = None
    revision: str | None = Field(default=None, max_length=200, description="The revision fetched (a commit for hf://).")
    cached: Flag = Field(default=False, description="Found complete in the cache: nothing was fetched.")
    error: str | None = Field(default=None, max_length=1024, description="The last failure (retried unless Failed).")


class CheckpointExport(_Api):
    """A complete checkpoint uploaded to spec.export.uri."""

    checkpoint: str = Field(max_length=MAX_PATH_LENGTH, description="e.g. hf_format/samples_64")
    uri: str = Field(max_length=2048)
    bytes: Count = 0
    time: DateTime


class LossPoint(_Api):
    """One point of the loss curve, at ``samples`` samples seen."""

    samples: Count
    loss: Finite | None = Field(default=None, description="The step's average loss.")
    val_loss: Finite | None = Field(default=None, description="Validation loss logged at that step.")
    lr: Finite | None = Field(default=None, description="Learning rate of the step.")


class TrainingProgress(_Api):
    """How far training is; every field is read from the checkpoint volume."""

    stage: Stage = Stage.INITIALIZING
    epoch: Count = Field(default=0, description="1-based epoch in progress (numEpochs once completed).")
    num_epochs: Count = 0
    # None, not "": the API server (1.20 at least) refuses an empty string in a CRD string field.
    epoch_display: str | None = Field(
        default=None, max_length=MAX_DISPLAY_LENGTH, description="epoch/numEpochs, for kubectl get"
    )
    samples_seen: Count = 0
    total_samples: Count | None = Field(default=None, description="Samples per epoch * numEpochs.")
    percent: int = Field(default=0, ge=0, le=100, strict=True)
    percent_display: str | None = Field(
        default=None, max_length=MAX_DISPLAY_LENGTH, description="percent with a % sign, for kubectl get"
    )
    last_loss: str | None = Field(
        default=None, max_length=MAX_DECIMAL_LENGTH, description="Average loss of the last step (a decimal string)."
    )
    throughput: str | None = Field(
        default=None, max_length=MAX_DECIMAL_LENGTH, description="Samples per second over the last step."
    )
    eta_seconds: Count | None = Field(default=None, description="Remaining samples / throughput.")
    checkpoints: list[CheckpointInfo] = Field(
        default_factory=list,
        max_length=MAX_CHECKPOINTS,
        description=f"The complete hf_format checkpoints, oldest first: the newest {MAX_CHECKPOINTS} when there "
        "are more.",
    )
    latest_checkpoint: str | None = Field(
        default=None, max_length=MAX_NAME_LENGTH, description="Name of the newest complete checkpoint."
    )
    latest_full_state: FullStateInfo | None = None
    resumable: Flag = Field(default=False, description="A complete full_state exists to resume from.")
    last_update_time: DateTime | None = Field(default=None, description="Newest fact on the volume.")
    adoption: CheckpointAdoption | None = Field(
        default=None, description="Set when this job adopted another job's checkpoints: whose, and why."
    )
    downloads: list[SourceDownload] | None = Field(
        default=None, max_length=8, description="The job's remote sources: fetched once, before any rank trains."
    )
    exports: list[CheckpointExport] | None = Field(
        default=None, max_length=MAX_CHECKPOINTS, description="Checkpoints uploaded to spec.export.uri, oldest first."
    )
    export_error: str | None = Field(
        default=None, max_length=1024, description="The last export failure while it is retried (cleared on success)."
    )
    loss_history: list[LossPoint] | None = Field(
        default=None,
        max_length=MAX_LOSS_HISTORY,
        description=f"The loss curve, downsampled: at most {MAX_LOSS_HISTORY} points, the first and the newest "
        "step always, older steps thinned evenly; samples strictly increasing.",
    )


def _step_time(step: StepRecord) -> str | None:
    if not step.timestamp:
        return None
    try:
        return rfc3339(datetime.fromisoformat(step.timestamp))
    except ValueError:
        return None


def _decimal(value: float | None, digits: int) -> str | None:
    # Status holds strings for floats: the CRD's integer/number typing and kubectl's columns
    # both handle a fixed-precision string better than a long binary float.
    return None if value is None else f"{value:.{digits}f}"


def summarize_progress(
    tree: CheckpointTree,
    *,
    num_epochs: int,
    last_step: StepRecord | None,
    last_totals: TotalsRecord | None,
    runs: list[RunRecord],
    data_dir_exists: bool,
    loss_history: list[LossPoint] | None = None,
    adoption: CheckpointAdoption | None = None,
    transfers: TransferState | None = None,
) -> TrainingProgress:
    """The progress a job's status shows, from one scan of its checkpoint volume.

    ``last_step``/``last_totals`` are the newest records of the metrics log (appended across
    restarts); ``runs`` are the launcher's run records; ``data_dir_exists`` tells processing data
    apart from starting up when no data-ready marker exists yet. A value the status schema
    cannot hold (the volume is the job's own: anything may be there) is left out
    (summary_fields and check_summary tell which).
    """
    return (
        check_summary(
            summary_fields(
                tree,
                num_epochs=num_epochs,
                last_step=last_step,
                last_totals=last_totals,
                runs=runs,
                data_dir_exists=data_dir_exists,
                loss_history=loss_history,
                adoption=adoption,
                transfers=transfers,
            )
        ).value
        or TrainingProgress()
    )


def summary_fields(
    tree: CheckpointTree,
    *,
    num_epochs: int,
    last_step: StepRecord | None,
    last_totals: TotalsRecord | None,
    runs: list[RunRecord],
    data_dir_exists: bool,
    loss_history: list[LossPoint] | None = None,
    adoption: CheckpointAdoption | None = None,
    transfers: TransferState | None = None,
) -> dict[str, Any]:
    """summarize_progress's summary as unchecked fields (snake_case names)."""
    samples_per_epoch = (last_totals.total_samples if last_totals else None) or tree.samples_per_epoch
    total = samples_per_epoch * num_epochs if samples_per_epoch else None

    complete = [c for c in tree.hf_checkpoints if c.complete]
    checkpoints = [
        {
            "name": c.name,
            "path": f"{HF_FORMAT_DIR}/{c.name}",
            "samples": c.samples,
            "epoch": None if c.epoch is None else c.epoch + 1,
            "time": rfc3339(c.mtime),
        }
        for c in complete[-MAX_CHECKPOINTS:]
    ]
    full = tree.latest_full_state
    full_info = None
    if full is not None:
        full_info = {
            "name": full.name,
            "path": full.path,
            "epoch": full.epoch + 1,
            "samples": full.metadata.samples_seen if full.metadata else None,
            "mid_epoch": bool(full.metadata and full.metadata.mid_epoch),
            "time": rfc3339(full.mtime),
        }

    # A step logged before the latest run started belongs to an earlier run: still the best
    # known position (samples_seen carries across restarts), so it stays.
    samples_seen = last_step.samples_seen if last_step else 0
    # 1-based from the start (the metrics log and run records count from 0): the first epoch
    # before anything ran; the epoch the latest run starts in until it logs a step (a resume
    # from an epoch-end state starts in the next epoch, after the last logged step's).
    epoch = max(1, last_step.epoch + 1 if last_step else 0, runs[-1].start_epoch + 1 if runs else 0)
    if num_epochs >= 1:
        epoch = min(epoch, num_epochs)
    if tree.completion is not None:
        stage = Stage.COMPLETED
        epoch = num_epochs
        samples_seen = max(samples_seen, tree.completion.samples_seen)
    elif transfers is not None and any(d.state is not DownloadState.DONE for d in transfers.downloads):
        stage = Stage.DOWNLOADING
    elif tree.incomplete_full_states or any(not c.complete for c in tree.hf_checkpoints):
        stage = Stage.SAVING
    elif tree.data_ready is None:
        stage = Stage.PROCESSING_DATA if data_dir_exists else Stage.INITIALIZING
    elif last_step is not None and (not runs or _logged_after(last_step, runs[-1])):
        stage = Stage.TRAINING
    else:
        stage = Stage.INITIALIZING

    if stage is Stage.COMPLETED:
        percent = 100
    elif total:
        percent = min(99, int(100 * samples_seen / total))  # 100 only once the marker says so
    else:
        percent = 0
    percent = max(0, percent)
    throughput = last_step.overall_throughput if last_step else None
    eta = None
    if stage is Stage.COMPLETED:
        eta = 0
    elif total and throughput and math.isfinite(throughput) and throughput > 0:
        eta = int(max(0, total - samples_seen) / throughput)

    times: list[str] = [str(c["time"]) for c in checkpoints]
    if full_info is not None:
        times.append(str(full_info["time"]))
    step_time = _step_time(last_step) if last_step is not None else None
    if step_time:
        times.append(step_time)
    if tree.completion is not None:
        times.append(rfc3339(tree.completion.finished_at))
    return {
        "stage": stage,
        "epoch": epoch,
        "num_epochs": num_epochs,
        "epoch_display": f"{epoch}/{num_epochs}",
        "samples_seen": samples_seen,
        "total_samples": total,
        "percent": percent,
        "percent_display": f"{percent}%",
        "last_loss": _decimal(last_step.avg_loss if last_step else None, 4),
        "throughput": _decimal(throughput, 2),
        "eta_seconds": eta,
        "checkpoints": checkpoints,
        "latest_checkpoint": complete[-1].name if complete else None,
        "latest_full_state": full_info,
        "resumable": full_info is not None,
        "last_update_time": max(times) if times else None,
        "adoption": adoption.model_dump() if adoption is not None else None,
        **_transfer_fields(transfers),
        "loss_history": [point.model_dump() for point in loss_history] if loss_history else None,
    }


def _transfer_fields(transfers: TransferState | None) -> dict[str, Any]:
    """The transfer sidecar's report (sources.py) as summary fields."""
    if transfers is None:
        return {}
    downloads = [
        {
            "field": d.field,
            "source": d.source,
            "state": d.state.value,
            "bytes_done": d.bytes_done,
            "bytes_total": d.bytes_total,
            "files": d.files,
            "revision": d.revision,
            "cached": d.cached,
            "error": d.error,
        }
        for d in transfers.downloads
    ]
    exports = [
        {"checkpoint": e.checkpoint, "uri": e.uri, "bytes": e.bytes, "time": e.exported_at}
        for e in transfers.exports[-MAX_CHECKPOINTS:]
    ]
    return {"downloads": downloads or None, "exports": exports or None, "export_error": transfers.export_error}


def check_summary(fields: dict[str, Any]) -> Checked[TrainingProgress]:
    """A summary (summary_fields) as the status schema allows it: each value it cannot hold
    dropped and named."""
    return validate_dropping(TrainingProgress, {k: v for k, v in fields.items() if v is not None})


def parse_progress_summary(raw: str) -> Checked[TrainingProgress]:
    """The summary a progress ConfigMap holds (written by the job's own pods: untrusted), each
    value checked against the status schema; JSON that is not an object is refused whole."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return Checked(None, (DroppedValue("", "", f"not JSON: {exc}", preview(raw)),))
    return validate_dropping(TrainingProgress, data)


def _logged_after(step: StepRecord, run: RunRecord) -> bool:
    logged = _step_time(step)
    return logged is None or logged >= rfc3339(run.started_at)


# --- the loss history -------------------------------------------------------------------------


def _rounded(value: float | None) -> float | None:
    # 6 significant digits: plenty for a curve, and a short JSON number. NaN or inf (a diverged
    # step) cannot be written to the API: left out.
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.6g}")


def _on_the_curve(samples: int) -> bool:
    # A count the status cannot hold (a garbage metrics line) would also push every real point
    # after it off the curve (points are kept in increasing samples).
    return 0 <= samples <= MAX_API_INT


@dataclass
class _Entry:
    index: int  # the how-many-th point added to its series (never reused)
    samples: int
    values: dict[str, float | None]


@dataclass
class _ThinnedSeries:
    """Points with increasing samples, thinned evenly: the points whose index is a multiple of
    ``stride``, the first and the newest; the stride doubles whenever more than ``capacity``
    are kept, so between capacity/2 and capacity points cover the whole run."""

    capacity: int
    stride: int = 1
    count: int = 0
    kept: list[_Entry] = field(default_factory=list)

    def add(self, samples: int, values: dict[str, float | None]) -> None:
        # Steps trained again after a crash (resumed from an older state) log the same samples
        # again: the later line is the one that counts.
        while self.kept and self.kept[-1].samples >= samples:
            self.kept.pop()
        if len(self.kept) > 1 and self.kept[-1].index % self.stride:
            self.kept.pop()  # was kept only as the newest
        self.kept.append(_Entry(self.count, samples, values))
        self.count += 1
        self.thin()

    def thin(self) -> None:
        while len(self.kept) > self.capacity:
            self.stride *= 2
            last = len(self.kept) - 1
            self.kept = [e for i, e in enumerate(self.kept) if i in (0, last) or e.index % self.stride == 0]


@dataclass
class LossHistory:
    """The downsampled loss curve of a run, fed the metrics log's records in order (pure).

    Bounded whatever the run's length: at most ``max_points`` points; validation losses have a
    share of ``max_validation_points`` once the first one is logged. A point is
    ``{samples, loss, lr}`` of a step, with ``valLoss`` when a validation was logged at that
    step (a validation whose step was thinned away is a point of its own). Feeding the same
    records gives the same points: the reporter's summary stays identical for an unchanged log.
    """

    max_points: int = MAX_LOSS_HISTORY
    max_validation_points: int = MAX_VALIDATION_POINTS
    _steps: _ThinnedSeries = field(init=False)
    _validations: _ThinnedSeries = field(init=False)

    def __post_init__(self) -> None:
        self._steps = _ThinnedSeries(self.max_points)
        self._validations = _ThinnedSeries(self.max_validation_points)

    def add_step(self, step: StepRecord) -> None:
        loss = _rounded(step.avg_loss)
        if loss is None or not _on_the_curve(step.samples_seen):
            return
        self._steps.add(step.samples_seen, {"loss": loss, "lr": _rounded(step.lr)})

    def add_validation(self, record: ValidationRecord) -> None:
        val_loss = _rounded(record.val_loss)
        if record.samples_seen is None or val_loss is None or not _on_the_curve(record.samples_seen):
            return  # not known at which step (or at none a status can hold): no place on the curve
        if self._validations.count == 0:  # the first: validations get their share
            self._steps.capacity = self.max_points - self.max_validation_points
            self._steps.thin()
        self._validations.add(record.samples_seen, {"val_loss": val_loss})

    def points(self) -> list[LossPoint]:
        rows: dict[int, dict[str, float | None]] = {}
        for entry in (*self._steps.kept, *self._validations.kept):
            rows.setdefault(entry.samples, {}).update(entry.values)
        return [LossPoint(samples=samples, **rows[samples]) for samples in sorted(rows)]


def loss_history(
    steps: list[StepRecord],
    validations: Sequence[ValidationRecord] = (),
    *,
    max_points: int = MAX_LOSS_HISTORY,
    max_validation_points: int = MAX_VALIDATION_POINTS,
) -> list[LossPoint]:
    """The loss history of a whole metrics log (what the reporter builds as it reads it)."""
    history = LossHistory(max_points, max_validation_points)
    for step in steps:
        history.add_step(step)
    for record in validations:
        history.add_validation(record)
    return history.points()
