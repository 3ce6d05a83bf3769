"""What an SFTJob object says about its run, for people and for sft()'s caller (pure).

The status is read with the operator's own models (``SFTJobStatus``, ``TrainingProgress``): the
fields they define, under the names they define. A job the operator has not reached yet has no
status, and a job whose pods have not reported has no ``progress``; a progress fact the status
does not carry (``model_fields_set``) is shown as unknown, never as the model's default.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sft_client.api.paths import pod_path_to_url
from sft_core import contract
from sft_core.progress import LossPoint, TrainingProgress
from sft_models.models import ConditionType, InvalidSpecError, Phase, SFTJobStatus, parse_job
from sft_models.naming import claim_name

TERMINAL_PHASES = frozenset({Phase.SUCCEEDED.value, Phase.FAILED.value})


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
    """One SFTJob as sft()/the CLI show it; None: the status does not say."""

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
    resumes_from: str | None = None  # the newest complete full_state, relative to the checkpoint directory
    created: str | None = None
    ready_nodes: int = 0
    # The remote sources still being fetched: "spec.modelPath 1.2 GB/3.4 GB", one per source.
    downloading: tuple[str, ...] = ()
    # The remote URIs of the exported checkpoints, oldest first (spec.export).
    exports: tuple[str, ...] = ()

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


def parse_status(raw: dict[str, Any] | None) -> SFTJobStatus:
    """The job's status through the operator's model. A status this client's models cannot read
    (written by a newer operator) keeps what they can: without its progress, else nothing."""
    raw = raw or {}
    try:
        return SFTJobStatus.model_validate(raw)
    except ValidationError:
        pass
    try:
        return SFTJobStatus.model_validate({key: value for key, value in raw.items() if key != "progress"})
    except ValidationError:
        return SFTJobStatus()


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def failure_of(status: SFTJobStatus) -> tuple[str | None, str | None]:
    """(reason, message) of a failed job: its Failed condition, else a refused spec (SpecValid=False)."""
    for wanted_type, wanted_status in ((ConditionType.FAILED, "True"), (ConditionType.SPEC_VALID, "False")):
        for condition in status.conditions:
            if condition.type == wanted_type.value and condition.status == wanted_status:
                return condition.reason, condition.message
    return None, None


def _checkpoint_dir_and_claim(job: dict[str, Any]) -> tuple[str, str | None]:
    """(ckpt_output_dir in the pods, the checkpoint claim's name) as the operator renders them;
    for an object the models refuse, the raw spec's path and existing claim."""
    try:
        parsed = parse_job(job)
    except (InvalidSpecError, ValidationError):
        volume = (job.get("spec") or {}).get("checkpoints") or {}
        root = posixpath.normpath(posixpath.join(contract.CHECKPOINT_MOUNT_PATH, str(volume.get("path") or "")))
        return root, volume.get("existingClaim")
    return parsed.spec.ckpt_output_dir, claim_name(parsed)


def checkpoints_of(job: dict[str, Any], progress: TrainingProgress | None) -> tuple[Checkpoint, ...]:
    if progress is None or not progress.checkpoints:
        return ()
    root, claim = _checkpoint_dir_and_claim(job)
    found = []
    for info in progress.checkpoints:
        pod_path = posixpath.normpath(posixpath.join(root, info.path))  # info.path: relative to the directory
        found.append(
            Checkpoint(
                name=info.name,
                path=pod_path_to_url(pod_path, claim),
                pod_path=pod_path,
                samples=info.samples,
                epoch=info.epoch,
                time=info.time,
            )
        )
    return tuple(found)


def _reported(progress: TrainingProgress | None, field_name: str) -> Any:
    """A progress field as the status carries it; None when the status leaves it out."""
    if progress is None or field_name not in progress.model_fields_set:
        return None
    return getattr(progress, field_name)


def _float(text: str | None) -> float | None:
    return None if text is None else float(text)  # the status's decimal strings (TrainingProgress)


def view_job(job: dict[str, Any]) -> JobView:
    """The JobView of an SFTJob object as the API returns it."""
    metadata = job.get("metadata") or {}
    status = parse_status(job.get("status"))
    progress = status.progress
    stage = _reported(progress, "stage")
    eta_seconds = _reported(progress, "eta_seconds")
    full_state = _reported(progress, "latest_full_state")
    spec_epochs = (job.get("spec") or {}).get("numEpochs")
    phase = status.phase.value
    reason, message = failure_of(status) if phase == Phase.FAILED.value else (None, None)
    nodes = status.nodes or (f"{status.ready_nodes}/{status.total_nodes}" if status.total_nodes else "")
    return JobView(
        name=metadata.get("name", ""),
        namespace=metadata.get("namespace", ""),
        phase=phase,
        nodes=nodes,
        stage=None if stage is None else stage.value,
        epoch=_reported(progress, "epoch"),
        num_epochs=_reported(progress, "num_epochs") or (spec_epochs if isinstance(spec_epochs, int) else None),
        samples=_reported(progress, "samples_seen"),
        total_samples=_reported(progress, "total_samples"),
        percent=None if (percent := _reported(progress, "percent")) is None else float(percent),
        loss=_float(_reported(progress, "last_loss")),
        throughput=_float(_reported(progress, "throughput")),
        eta=None if eta_seconds is None else format_duration(eta_seconds),
        updated=_reported(progress, "last_update_time"),
        reason=reason,
        message=message,
        checkpoints=checkpoints_of(job, progress),
        resumes_from=None if full_state is None else full_state.path,
        created=metadata.get("creationTimestamp"),
        ready_nodes=status.ready_nodes,
        downloading=tuple(
            f"{d.field} {format_bytes(d.bytes_done)}" + (f"/{format_bytes(d.bytes_total)}" if d.bytes_total else "")
            for d in (_reported(progress, "downloads") or [])
            if d.state != "Done"
        ),
        exports=tuple(e.uri for e in (_reported(progress, "exports") or [])),
    )


def format_bytes(count: int) -> str:
    """1234567 -> 1.2 MB (decimal units, as object stores and the hub show sizes)."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{count} B"


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
    # How download() reaches the cluster; None: connect from the kubeconfig when it is called.
    api_client: Any = field(default=None, repr=False, compare=False)

    @property
    def checkpoint_paths(self) -> list[str]:
        return [checkpoint.path for checkpoint in self.checkpoints]

    @property
    def final_checkpoint(self) -> Checkpoint | None:
        return self.checkpoints[-1] if self.checkpoints else None

    @property
    def succeeded(self) -> bool:
        return self.phase == Phase.SUCCEEDED.value

    @property
    def loss_history(self) -> list[LossPoint]:
        """The downsampled loss curve the status carries (samples, loss, val_loss, lr)."""
        from sft_client.api.plot import loss_points

        return loss_points(self.status)

    def plot_loss(self, output: str | os.PathLike[str] | None = None) -> Path | None:
        """The loss curve: a PNG at ``output`` (needs the ``plot`` extra, matplotlib; returns its
        path), else printed as a text chart."""
        from sft_client.api import plot

        title = f"{self.namespace}/{self.name}"
        if output is not None:
            return plot.save_png(self.loss_history, output, title=title)
        print(plot.text_chart(self.loss_history, title=title))
        return None

    def download(
        self,
        to: str | os.PathLike[str],
        checkpoint: str | None = None,
        *,
        show_progress: bool = True,
        api_client: Any = None,
    ) -> Path:
        """Bring a complete hf_format checkpoint to the directory ``to`` on this machine, byte for
        byte: the final one, or ``checkpoint`` by name (e.g. ``"samples_64"``). Reads the job
        again (a newer checkpoint counts), copies through a short-lived pod that mounts the
        checkpoint claim read-only, and checks every file's size and sha256. ``to`` must not
        exist or be empty; returns it. Raises LookupError when there is no such checkpoint."""
        from sft_client.api.download import download_checkpoint
        from sft_client.api.jobs import connect, get_job

        client = api_client or self.api_client
        if client is None:
            client, _ = connect()
        return download_checkpoint(
            client, get_job(client, self.name, self.namespace), to, checkpoint, show_progress=show_progress
        )


def result_of(job: dict[str, Any], manifest: dict[str, Any] | None = None, api_client: Any = None) -> SFTJobResult:
    view = view_job(job)
    return SFTJobResult(
        name=view.name,
        namespace=view.namespace,
        phase=view.phase,
        checkpoints=list(view.checkpoints),
        metrics=view.metrics(),
        status=dict(job.get("status") or {}),
        manifest=manifest or {},
        api_client=api_client,
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
