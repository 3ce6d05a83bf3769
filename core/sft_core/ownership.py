"""Who a checkpoint directory belongs to, and what a job may do with one another job wrote.

``sft-operator/OWNER`` (an OwnerRecord, JSON) lists the jobs that owned the directory, oldest
first; the last is the current owner. Node 0's launcher writes it before anything else it
writes there; the reporter reads it so that a job never reports another job's run.

A job starting on a directory (``decide``):

- holding nothing of ours: it records itself (New);
- owned by itself: nothing to do;
- owned by another job with the same training fields (a manifest deleted and applied again):
  it adopts the checkpoints (SameTrainingFields) and resumes from them;
- owned by another job with other training fields: refused (the launcher exits 2: Failed
  ConfigRejected), unless spec.checkpoints.adoptExisting (AdoptExisting);
- holding checkpoints but no record (written before records existed): adopted, said as a
  Warning (Unrecorded), so an upgrade never stops a job.

Training fields are models.TRAINING_FIELDS: the immutable fields whose change makes resuming
wrong (model, data, hyperparameters, topology), not where the directory is or how pods are
scheduled. Retention deletes only full states written during the tenure of an owner of the
current lineage (owners that adopted their predecessor with the same training fields).

Pure, but for the small read/write helpers at the end; no kopf or kubernetes import (the
trainer image imports it).
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sft_core import checkpoints
from sft_core.checkpoints import FullState
from sft_core.events import fit_message
from sft_core.progress import CheckpointAdoption
from sft_core.wire import rfc3339

OWNER_FILE = checkpoints.OWNER_FILE
# What a message lists of the other job's output before "and N more".
MAX_LISTED = 4
MAX_LISTED_FIELDS = 5


class Acquired(str, enum.Enum):
    """How an owner came to own the directory."""

    NEW = "New"
    SAME_TRAINING_FIELDS = "SameTrainingFields"
    ADOPT_EXISTING = "AdoptExisting"
    UNRECORDED = "Unrecorded"


def training_fields_hash(fields: dict[str, Any]) -> str:
    """sha256 of the training fields as canonical JSON: equal for equal manifests."""
    data = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(data).hexdigest()


class OwnerEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    uid: str = Field(min_length=1)
    namespace: str | None = None
    name: str | None = None
    training_fields_hash: str
    training_fields: dict[str, Any] = Field(default_factory=dict)  # to name what differs
    acquired: Acquired
    since: datetime  # the volume's clock: full states are attributed by their mtimes
    note: str | None = None  # what the adoption said (the reporter publishes it)

    @property
    def job(self) -> str:
        if self.name is None:
            return f"SFTJob uid {self.uid}"
        return f"SFTJob {self.namespace}/{self.name} (uid {self.uid})"


class OwnerRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    owners: list[OwnerEntry] = Field(min_length=1)

    @property
    def current(self) -> OwnerEntry:
        return self.owners[-1]


@dataclass(frozen=True)
class JobIdentity:
    """The job a launcher or reporter runs for (from its training config)."""

    uid: str
    namespace: str | None
    name: str | None
    training_fields: dict[str, Any]

    @property
    def hash(self) -> str:
        return training_fields_hash(self.training_fields)

    def entry(self, acquired: Acquired, since: datetime, note: str | None = None) -> OwnerEntry:
        return OwnerEntry(
            uid=self.uid,
            namespace=self.namespace,
            name=self.name,
            training_fields_hash=self.hash,
            training_fields=self.training_fields,
            acquired=acquired,
            since=since,
            note=note,
        )


class Action(str, enum.Enum):
    OWNED = "Owned"  # already ours: nothing to write
    CLAIM = "Claim"  # nothing of ours there: record ourselves
    ADOPT = "Adopt"  # another job's (or an unrecorded) run: record the adoption
    REFUSE = "Refuse"


@dataclass(frozen=True)
class Decision:
    action: Action
    acquired: Acquired | None  # what to record (CLAIM, ADOPT)
    message: str  # REFUSE: why; ADOPT: what was adopted; else ""
    previous: OwnerEntry | None = None


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return f"{shown} and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else shown


def differing_fields(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``learningRate 0.001 -> 0.002; numEpochs 2 -> 3`` (keys in order, at most a few)."""
    keys = sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
    parts = [f"{key} {json.dumps(old.get(key))} -> {json.dumps(new.get(key))}" for key in keys[:MAX_LISTED_FIELDS]]
    if len(keys) > MAX_LISTED_FIELDS:
        parts.append(f"and {len(keys) - MAX_LISTED_FIELDS} more")
    return "; ".join(parts) if parts else "not recorded"


def decide(
    record: OwnerRecord | None,
    unreadable: str | None,
    output: list[str],
    me: JobIdentity,
    *,
    adopt_existing: bool,
    directory: str,
) -> Decision:
    """What a job starting on ``directory`` does. ``record``: its owner record (None: absent or
    ``unreadable``, then why); ``output``: what of a run is there (``training_output``)."""
    opt_in = "set spec.checkpoints.adoptExisting: true to continue from them, or use another spec.checkpoints.path"
    if unreadable is not None:
        if adopt_existing:
            return Decision(
                Action.ADOPT,
                Acquired.ADOPT_EXISTING,
                f"adopted {directory} (its owner record could not be read: {unreadable}): "
                "spec.checkpoints.adoptExisting",
            )
        return Decision(
            Action.REFUSE,
            None,
            f"{directory} has an owner record {OWNER_FILE} that cannot be read ({unreadable}); {opt_in}",
        )
    if record is None:
        if not output:
            return Decision(Action.CLAIM, Acquired.NEW, "")
        return Decision(
            Action.ADOPT,
            Acquired.UNRECORDED,
            f"adopted checkpoints without an owner record in {directory} (written before owners "
            f"were recorded): {_listed(output)}",
        )
    previous = record.current
    if previous.uid == me.uid:
        return Decision(Action.OWNED, None, "", previous)
    if previous.training_fields_hash == me.hash:
        return Decision(
            Action.ADOPT,
            Acquired.SAME_TRAINING_FIELDS,
            f"adopted checkpoints of {previous.job}: same training fields",
            previous,
        )
    differ = differing_fields(previous.training_fields, me.training_fields)
    if adopt_existing:
        return Decision(
            Action.ADOPT,
            Acquired.ADOPT_EXISTING,
            f"adopted checkpoints of {previous.job}: spec.checkpoints.adoptExisting (training fields differ: {differ})",
            previous,
        )
    held = f" ({_listed(output)})" if output else ""
    return Decision(
        Action.REFUSE,
        None,
        f"{directory} holds the checkpoints of {previous.job}{held}, trained with other training "
        f"fields ({differ}); {opt_in}",
        previous,
    )


def recorded(record: OwnerRecord | None, me: JobIdentity, decision: Decision, since: datetime) -> OwnerRecord:
    """The record after CLAIM or ADOPT: this job appended, every previous owner kept."""
    if decision.acquired is None:
        raise ValueError(f"nothing to record for {decision.action.value}")
    previous = list(record.owners) if record is not None else []
    return OwnerRecord(owners=[*previous, me.entry(decision.acquired, since, decision.message or None)])


def lineage(record: OwnerRecord) -> list[int]:
    """Indexes of the current owner and of the owners it continues with the same training
    fields (each adopted its predecessor as SameTrainingFields), newest first."""
    chain = [len(record.owners) - 1]
    while chain[-1] > 0 and record.owners[chain[-1]].acquired is Acquired.SAME_TRAINING_FIELDS:
        chain.append(chain[-1] - 1)
    return chain


def writer(record: OwnerRecord, written_at: float) -> int | None:
    """Index of the owner whose tenure covers ``written_at`` (a POSIX time, the volume's clock);
    None before the first owner (a directory adopted as Unrecorded)."""
    found = None
    for index, entry in enumerate(record.owners):
        if entry.since.timestamp() <= written_at:
            found = index
    return found


def retention_may_delete(
    record: OwnerRecord | None, written_at: Callable[[FullState], float]
) -> Callable[[FullState], bool]:
    """Retention's filter: a full state written by an owner of the current lineage. No record:
    nothing may go (the record is written before any run)."""
    if record is None:
        return lambda state: False
    mine = set(lineage(record))
    return lambda state: writer(record, written_at(state)) in mine


def owned_by(record: OwnerRecord | None, uid: str) -> bool:
    return record is not None and record.current.uid == uid


def adoption(record: OwnerRecord) -> CheckpointAdoption | None:
    """What the status says of the current owner's adoption (None: it started the directory)."""
    current = record.current
    if current.acquired is Acquired.NEW:
        return None
    previous = record.owners[-2] if len(record.owners) > 1 else None
    return CheckpointAdoption(
        previous_uid=previous.uid if previous is not None else None,
        previous_job=f"{previous.namespace}/{previous.name}" if previous is not None and previous.name else None,
        reason=current.acquired.value,
        message=fit_message(current.note or f"adopted checkpoints ({current.acquired.value})"),
        time=rfc3339(current.since),
    )


def training_output(tree: checkpoints.CheckpointTree, runs: int, set_aside: list[str]) -> list[str]:
    """What of a run a directory holds, as paths relative to it (the completion marker first)."""
    found = [checkpoints.COMPLETION_MARKER_FILE] if tree.completion is not None else []
    found += [state.path for state in tree.full_states]
    found += [f"{checkpoints.FULL_STATE_DIR}/{name}" for name in tree.stray_full_state_entries]
    found += [f"{checkpoints.HF_FORMAT_DIR}/{ckpt.name}" for ckpt in tree.hf_checkpoints]
    if runs:
        found.append(f"{checkpoints.RUNS_LOG_FILE} ({runs} runs)")
    found += [f"{checkpoints.SET_ASIDE_DIR}/{name}" for name in set_aside]
    return found


# --- I/O --------------------------------------------------------------------------------------
def read_owner_record(root: Path) -> tuple[OwnerRecord | None, str | None]:
    """(record, None), (None, None) when there is none, (None, why) when it cannot be read."""
    path = Path(root) / OWNER_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as error:
        return None, str(error)
    try:
        return OwnerRecord.model_validate_json(data), None
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        return None, f"{where}: {first['msg']}" if where else first["msg"]


def scan_output(root: Path) -> list[str]:
    root = Path(root)
    set_aside_dir = root / checkpoints.SET_ASIDE_DIR
    set_aside = sorted(entry.name for entry in set_aside_dir.iterdir()) if set_aside_dir.is_dir() else []
    return training_output(checkpoints.scan_checkpoints(root), len(checkpoints.read_run_records(root)), set_aside)


def volume_now(root: Path) -> datetime:
    """The volume's clock (which full states' mtimes follow), not this pod's."""
    probe = Path(root) / checkpoints.OPERATOR_DIR / ".clock-probe"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_bytes(b"")
    try:
        return datetime.fromtimestamp(probe.stat().st_mtime, timezone.utc)
    finally:
        probe.unlink(missing_ok=True)


def write_owner_record(root: Path, record: OwnerRecord) -> None:
    checkpoints.atomic_write_bytes(Path(root) / OWNER_FILE, record.model_dump_json(indent=1).encode() + b"\n")


def set_aside_unreadable_record(root: Path, now: datetime) -> str:
    """Keep an unreadable record next to the others (nothing is lost) before replacing it."""
    source = Path(root) / OWNER_FILE
    target = Path(root) / checkpoints.SET_ASIDE_DIR / f"OWNER-{now.strftime('%Y%m%dT%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)
    return str(target.relative_to(root))
