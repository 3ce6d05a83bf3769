"""What an SFTJob object says about its run, for people and for sft()'s caller (pure).

Reads whichever status fields exist: phase and conditions from the operator core, progress and
checkpoints once the status reporter writes them (stage, epoch, samples, percent, loss,
throughput, ETA, checkpoints). Unknown or missing fields are simply not shown.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from sft_operator import contract
from sft_operator.api.paths import pod_path_to_url
from sft_operator.checkpoints import HF_FORMAT_DIR
from sft_operator.models import ConditionType, InvalidSpecError, Phase, parse_job
from sft_operator.render import claim_name

TERMINAL_PHASES = frozenset({Phase.SUCCEEDED.value, Phase.FAILED.value})

# Where each progress fact may be found, first match wins; looked up in status.progress (if the
# reporter nests it) and then in status itself.
_KEYS: dict[str, tuple[str, ...]] = {
    "stage": ("stage",),
    "epoch": ("epoch", "currentEpoch"),
    "num_epochs": ("numEpochs", "totalEpochs", "epochs"),
    "samples": ("samplesSeen", "samples"),
    "total_samples": ("totalSamples", "samplesTotal"),
    "percent": ("percent", "percentComplete", "progressPercent"),
    "loss": ("loss", "lastLoss"),
    "throughput": ("throughput", "samplesPerSecond"),
    "eta": ("etaSeconds", "eta"),
    "updated": ("lastUpdateTime", "updateTime", "updatedAt"),
}


@dataclass(frozen=True)
class Checkpoint:
    """A saved model: ``path`` can be given straight back to sft() as ``model_path``."""

    name: str
    path: str  # pvc://<claim>/<path> when the claim is known, else the path in the pods
    pod_path: str  # the path inside the training pods
    samples: int | None = None
    epoch: int | None = None
    time: str | None = None


@dataclass(frozen=True)
class JobView:
    """One SFTJob as sft()/the CLI show it."""

    name: str
    namespace: str
    phase: str
    nodes: str = ""
    stage: str | None = None
    epoch: int | None = None
    num_epochs: int | None = None
    samples: int | None = None
    total_samples: int | None = None
    percent: float | None = None
    loss: float | None = None
    throughput: float | None = None
    eta: str | None = None
    updated: str | None = None
    reason: str | None = None
    message: str | None = None
    checkpoints: tuple[Checkpoint, ...] = ()
    created: str | None = None

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL_PHASES

    def metrics(self) -> dict[str, Any]:
        """The last known training metrics (only those the status has)."""
        values = {
            "stage": self.stage,
            "epoch": self.epoch,
            "num_epochs": self.num_epochs,
            "samples_seen": self.samples,
            "total_samples": self.total_samples,
            "percent": self.percent,
            "loss": self.loss,
            "throughput": self.throughput,
        }
        return {key: value for key, value in values.items() if value is not None}


def _lookup(sources: list[dict[str, Any]], keys: tuple[str, ...]) -> Any:
    for source in sources:
        for key in keys:
            value = source.get(key)
            if value is not None and not isinstance(value, (dict, list)):
                return value
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip().rstrip("%"))
    except ValueError:
        return None


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _eta(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_duration(value)
    return str(value)


def failure_of(status: dict[str, Any]) -> tuple[str | None, str | None]:
    """(reason, message) of a failed job: its Failed condition, else any False condition."""
    conditions = [c for c in status.get("conditions") or [] if isinstance(c, dict)]
    for condition in conditions:
        if condition.get("type") == ConditionType.FAILED.value and condition.get("status") == "True":
            return condition.get("reason"), condition.get("message")
    for condition in conditions:
        if condition.get("status") == "False" and condition.get("type") == ConditionType.SPEC_VALID.value:
            return condition.get("reason"), condition.get("message")
    if status.get("reason") or status.get("message"):
        return status.get("reason"), status.get("message")
    return None, None


def _checkpoint_place(job: dict[str, Any]) -> tuple[str, str | None]:
    """(ckpt_output_dir in the pods, the checkpoint claim's name) as the operator renders them;
    for an object the models refuse, the raw spec's path and existing claim."""
    try:
        parsed = parse_job(job)
    except (InvalidSpecError, ValidationError):
        volume = (job.get("spec") or {}).get("checkpoints") or {}
        root = posixpath.normpath(posixpath.join(contract.CHECKPOINT_MOUNT_PATH, str(volume.get("path") or "")))
        return root, volume.get("existingClaim")
    return parsed.spec.ckpt_output_dir, claim_name(parsed)


def _checkpoint_entries(status: dict[str, Any]) -> list[Any]:
    entries = status.get("checkpoints")
    if entries is None and isinstance(status.get("progress"), dict):
        entries = status["progress"].get("checkpoints")
    if isinstance(entries, dict):  # e.g. {"hfFormat": [...], "latestFullState": {...}}
        entries = next((value for value in entries.values() if isinstance(value, list)), [])
    return entries if isinstance(entries, list) else []


def checkpoints_of(job: dict[str, Any]) -> tuple[Checkpoint, ...]:
    status = job.get("status") or {}
    entries = _checkpoint_entries(status)
    if not entries:
        return ()
    root, claim = _checkpoint_place(job)
    found = []
    for entry in entries:
        if isinstance(entry, str):
            entry = {"name": posixpath.basename(entry.rstrip("/")), "path": entry}
        if not isinstance(entry, dict) or not (entry.get("name") or entry.get("path")):
            continue
        path = entry.get("path")
        entry_name = entry.get("name") or posixpath.basename(str(path).rstrip("/"))
        if path is None:
            pod_path = posixpath.join(root, HF_FORMAT_DIR, entry_name)
        elif str(path).startswith("/"):
            pod_path = str(path)
        else:  # relative to the checkpoint directory
            pod_path = posixpath.normpath(posixpath.join(root, str(path)))
        found.append(
            Checkpoint(
                name=entry_name,
                path=pod_path_to_url(pod_path, claim),
                pod_path=pod_path,
                samples=_int(entry.get("samples", entry.get("samplesSeen"))),
                epoch=_int(entry.get("epoch")),
                time=entry.get("time") or entry.get("savedAt") or entry.get("lastModified"),
            )
        )
    return tuple(found)


def view_job(job: dict[str, Any]) -> JobView:
    """The JobView of an SFTJob object as the API returns it."""
    metadata = job.get("metadata") or {}
    spec = job.get("spec") or {}
    status = job.get("status") or {}
    name = metadata.get("name", "")
    sources = [status["progress"]] if isinstance(status.get("progress"), dict) else []
    sources.append(status)
    found = {fact: _lookup(sources, keys) for fact, keys in _KEYS.items()}
    samples, total = _int(found["samples"]), _int(found["total_samples"])
    percent = _number(found["percent"])
    if percent is None and samples is not None and total:
        percent = 100.0 * samples / total
    phase = status.get("phase") or Phase.PENDING.value
    reason, message = failure_of(status) if phase == Phase.FAILED.value else (None, None)
    nodes = status.get("nodes") or ""
    if not nodes and status.get("totalNodes"):
        nodes = f"{status.get('readyNodes', 0)}/{status['totalNodes']}"
    return JobView(
        name=name,
        namespace=metadata.get("namespace", ""),
        phase=phase,
        nodes=nodes,
        stage=found["stage"],
        epoch=_int(found["epoch"]),
        num_epochs=_int(found["num_epochs"]) or _int(spec.get("numEpochs")),
        samples=samples,
        total_samples=total,
        percent=percent,
        loss=_number(found["loss"]),
        throughput=_number(found["throughput"]),
        eta=_eta(found["eta"]),
        updated=found["updated"],
        reason=reason,
        message=message,
        checkpoints=checkpoints_of(job),
        created=metadata.get("creationTimestamp"),
    )


def progress_line(view: JobView) -> str:
    """One plain line: what changed is what a log reader needs."""
    parts = [f"{view.namespace}/{view.name}", view.phase]
    if view.stage:
        parts.append(view.stage)
    if view.epoch is not None:
        parts.append(f"epoch {view.epoch}/{view.num_epochs}" if view.num_epochs else f"epoch {view.epoch}")
    if view.samples is not None:
        parts.append(f"samples {view.samples}/{view.total_samples}" if view.total_samples else f"samples {view.samples}")
    if view.percent is not None:
        parts.append(f"{view.percent:.0f}%")
    if view.loss is not None:
        parts.append(f"loss {view.loss:.4g}")
    if view.throughput is not None:
        parts.append(f"{view.throughput:.3g} samples/s")
    if view.eta:
        parts.append(f"eta {view.eta}")
    if view.checkpoints:
        parts.append(f"checkpoints {len(view.checkpoints)} (latest {view.checkpoints[-1].name})")
    if view.reason:
        parts.append(f"reason {view.reason}: {view.message or ''}".rstrip(": "))
    return " ".join(parts)


@dataclass(frozen=True)
class SFTJobResult:
    """What sft() returns: the job's final (or, with wait=False, current) state."""

    name: str
    namespace: str
    phase: str
    checkpoints: list[Checkpoint] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def checkpoint_paths(self) -> list[str]:
        return [checkpoint.path for checkpoint in self.checkpoints]

    @property
    def final_checkpoint(self) -> Checkpoint | None:
        return self.checkpoints[-1] if self.checkpoints else None

    @property
    def succeeded(self) -> bool:
        return self.phase == Phase.SUCCEEDED.value


def result_of(job: dict[str, Any], manifest: dict[str, Any] | None = None) -> SFTJobResult:
    view = view_job(job)
    return SFTJobResult(
        name=view.name,
        namespace=view.namespace,
        phase=view.phase,
        checkpoints=list(view.checkpoints),
        metrics=view.metrics(),
        status=dict(job.get("status") or {}),
        manifest=manifest or {},
    )


class SFTJobFailedError(RuntimeError):
    """The SFTJob ended Failed; carries the operator's reason and message and the result."""

    def __init__(self, result: SFTJobResult, reason: str | None, message: str | None):
        self.result = result
        self.reason = reason
        self.message = message
        super().__init__(
            f"SFTJob {result.namespace}/{result.name} failed: {reason or 'unknown reason'}"
            + (f": {message}" if message else "")
        )


class SFTJobDeletedError(RuntimeError):
    """The SFTJob was deleted while we waited for it."""
