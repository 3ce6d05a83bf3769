"""Publishing a job's status: derive it (status.py, pure), patch it only when it changed, and
post an Event on a phase change or a new refusal.

``JobStatusBook`` keeps, per job, a lock (one handler at a time derives a job's status) and the
status last written: it is fresher than the watch until the watch catches up, so a handler that
runs right after a write does not derive from an older status.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from kubernetes.client.exceptions import ApiException

from sft_core import contract
from sft_core.progress import TrainingProgress
from sft_core.untrusted import DroppedValue
from sft_core.wire import rfc3339
from sft_models.models import (
    ConditionType,
    InvalidSpecError,
    Phase,
    Reason,
    SFTJob,
    SFTJobStatus,
    epoch_full_state_warning,
    parse_job,
)
from sft_operator import metrics, render
from sft_operator.children import join_problems
from sft_operator.kube import KubeApi
from sft_operator.pod_facts import Blocker
from sft_operator.policy import AdmissionPolicy, parse_admitted_job
from sft_operator.run_policies import RunPolicy
from sft_operator.spec_checks import SpecProblem, VolumeCheck
from sft_operator.status import derive_status, phase_event_message

log = logging.getLogger("sft_operator")
Key = tuple[str, str]
# The Event of a spec that saves no full state at epoch ends (models.epoch_full_state_warning).
NO_EPOCH_FULL_STATE = "NoEpochFullState"
# The Event of a job that continues another job's checkpoints (status.progress.adoption).
ADOPTED_CHECKPOINTS = "AdoptedCheckpoints"
# The Event of a progress value the status schema cannot hold (untrusted.DroppedValue).
PROGRESS_VALUE_DROPPED = "ProgressValueDropped"
PROGRESS_REFUSED = "<refused by the API server>"  # its key among the dropped-value warnings


def job_key(body: dict[str, Any]) -> Key:
    return body["metadata"]["namespace"], body["metadata"]["name"]


class JobStatusBook:
    """Per-job lock, the status last written, and the keys of dropped progress values already
    warned about."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[Key, threading.Lock] = {}
        # Per job: its uid, the status last written, and the pod that status says it waits for.
        self._written: dict[Key, tuple[str, dict[str, Any], Blocker | None]] = {}
        self._warned: dict[Key, tuple[str, set[str]]] = {}

    def lock(self, key: Key) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def forget(self, key: Key) -> None:
        with self._guard:
            self._locks.pop(key, None)
            self._written.pop(key, None)
            self._warned.pop(key, None)

    def not_warned_yet(self, body: dict[str, Any], keys: Iterable[str]) -> list[str]:
        """Those of ``keys`` not warned about yet for this job (same uid); now they are."""
        uid = body["metadata"].get("uid", "")
        with self._guard:
            warned = self._warned.get(job_key(body))
            if warned is None or warned[0] != uid:
                warned = self._warned[job_key(body)] = (uid, set())
            new = [key for key in dict.fromkeys(keys) if key not in warned[1]]
            warned[1].update(new)
            return new

    def record(self, body: dict[str, Any], status: dict[str, Any], blocker: Blocker | None = None) -> None:
        self._written[job_key(body)] = (body["metadata"].get("uid", ""), status, blocker)

    def _mine(self, body: dict[str, Any]) -> tuple[str, dict[str, Any], Blocker | None] | None:
        written = self._written.get(job_key(body))
        return written if written is not None and written[0] == body["metadata"].get("uid", "") else None

    def current(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The job's status as last written by us (same uid), else as the body has it."""
        written = self._mine(body)
        return written[1] if written is not None else body.get("status")

    def blocker(self, body: dict[str, Any]) -> Blocker | None:
        """The pod the status last written by us (same uid) says the job waits for. None when we
        wrote none yet: after an operator restart a cause still in force is said once more."""
        written = self._mine(body)
        return written[2] if written is not None else None

    def standing_refusal(self, body: dict[str, Any]) -> SpecProblem | None:
        """The API's refusal of a child (e.g. a pod setting the StatefulSet cannot hold) as the
        status last recorded it. The indexes cannot tell it again, and only a reconcile of the
        spec may clear it: a child's event must not turn Failed to Pending."""
        for condition in (self.current(body) or {}).get("conditions") or []:
            if (condition.get("type"), condition.get("status"), condition.get("reason")) == (
                ConditionType.SPEC_VALID.value,
                "False",
                Reason.INVALID_SPEC.value,
            ):
                return SpecProblem(Reason.INVALID_SPEC, condition.get("message") or "")
        return None


def now() -> str:
    return rfc3339(datetime.now(timezone.utc))


def warn_dropped_progress(
    kube: KubeApi, book: JobStatusBook, body: dict[str, Any], dropped: Iterable[DroppedValue]
) -> None:
    """One Warning Event per job and key for a value of its progress summary that the status
    schema cannot hold (dropped; the rest of the summary is used), not one per summary the
    reporter publishes. An operator restart says it once more."""
    dropped = list(dropped)
    new = set(book.not_warned_yet(body, [value.key for value in dropped]))
    where = f"ConfigMap {contract.progress_configmap_name(body['metadata']['name'])} ({contract.PROGRESS_KEY})"
    for value in dropped:
        if value.key not in new:
            continue
        if value.key:
            message = f"{where}: dropped {value.describe('status.progress')}; the rest of the summary is used"
        else:
            message = (
                f"{where}: ignored: {value.describe('status.progress')}; status.progress keeps the summary last read"
            )
        log.warning("%s/%s: %s", *job_key(body), message)
        kube.post_event(body, "Warning", PROGRESS_VALUE_DROPPED, message)


def check_spec(
    body: dict[str, Any], statefulset: dict[str, Any] | None, policy: AdmissionPolicy | None = None
) -> tuple[SFTJob | None, SpecProblem | None]:
    """The parsed job, and the operator's objection to its spec (invalid, refused by the admin
    policy, or an immutable field changed since the StatefulSet was created), if any."""
    try:
        job = parse_job(body) if policy is None else parse_admitted_job(body, policy)
    except InvalidSpecError as exc:
        return None, SpecProblem(Reason.INVALID_SPEC, str(exc))
    if statefulset is not None:
        changes = render.immutable_changes(job, statefulset)
        if changes:
            return job, SpecProblem(Reason.IMMUTABLE_FIELD_CHANGED, join_problems(changes))
    return job, None


def update_status(
    kube: KubeApi,
    book: JobStatusBook,
    body: dict[str, Any],
    statefulset: dict[str, Any] | None,
    pods: Iterable[dict[str, Any]],
    problem: SpecProblem | None,
    volume: VolumeCheck | None,
    progress: TrainingProgress | None = None,
    stall: str | None = None,
) -> SFTJobStatus:
    """Derive the status; patch it only when it changed; post an Event on a phase change or a
    new refusal. Returns the status now in force. ``stall``: every rank is being restarted now
    because the job stalled (why)."""
    meta = body["metadata"]
    key = job_key(body)
    pods = list(pods)
    raw = book.current(body)
    current = SFTJobStatus.model_validate(raw) if raw else None
    derived = derive_status(
        current,
        generation=meta.get("generation"),
        policy=RunPolicy.from_spec(body.get("spec") or {}),
        statefulset=statefulset,
        pods=pods,
        problem=problem,
        volume=volume,
        now=now(),
        progress=progress,
        stall=stall,
    )
    new = derived.status
    new_api = new.to_api()
    if current is not None and current.to_api() == new_api:
        metrics.observe_job(body, current)
        return current
    patch = new_api
    if current is not None and current.restart_backoff is not None and new.restart_backoff is None:
        patch = {**new_api, "restartBackoff": None}  # a merge patch removes a field only when told to
    try:
        kube.patch_job_status(key[0], key[1], patch)
    except ApiException as exc:
        if exc.status == 404:  # deleted meanwhile
            return new
        if (
            exc.status in (400, 422)
            and progress is not None
            and new.progress != (current.progress if current else None)
        ):
            # The summary is the job's own (checked, but the API server has the last word): it
            # goes, not the phase, the conditions and the policies. The last accepted one stays.
            refused = (
                f"the API server refused the status with the new progress summary (HTTP {exc.status}: "
                f"{(exc.body or exc.reason or '')[:300]}); status.progress keeps the summary last accepted"
            )
            log.warning("%s/%s: %s", *key, refused)
            if book.not_warned_yet(body, [PROGRESS_REFUSED]):
                kube.post_event(body, "Warning", PROGRESS_VALUE_DROPPED, refused)
            return update_status(kube, book, body, statefulset, pods, problem, volume, None, stall)
        raise
    blocker_before = book.blocker(body)
    book.record(body, new_api, derived.blocker)
    metrics.observe_job(body, new, patched=True)
    _post_events(kube, body, current, new, problem, derived.blocker, blocker_before)
    if stall is not None:
        kube.post_event(body, "Warning", Reason.STALLED.value, stall)
    return new


def _post_events(
    kube: KubeApi,
    body: dict[str, Any],
    current: SFTJobStatus | None,
    new: SFTJobStatus,
    problem: SpecProblem | None,
    blocker: Blocker | None = None,
    blocker_before: Blocker | None = None,
) -> None:
    """The Events of a status change; ``blocker``: the pod the new status says the job waits for,
    ``blocker_before`` the one the status before said (posted once per cause)."""
    old_phase = current.phase if current is not None else None
    warning = epoch_full_state_warning(body.get("spec") or {}) if current is None else None
    if warning is not None:  # valid, but fewer resume points than the user likely thinks: say it once
        kube.post_event(body, "Warning", NO_EPOCH_FULL_STATE, warning)
    adoption = new.progress.adoption if new.progress is not None else None
    adopted_before = current.progress.adoption if current is not None and current.progress is not None else None
    if adoption is not None and adoption != adopted_before:  # said once, when the reporter first shows it
        kind = "Normal" if adoption.reason == "SameTrainingFields" else "Warning"
        kube.post_event(body, kind, ADOPTED_CHECKPOINTS, adoption.message)
    if new.phase != old_phase:
        kind = "Warning" if new.phase is Phase.FAILED else "Normal"
        kube.post_event(body, kind, new.phase.value, phase_event_message(new, problem))
        log.info("%s/%s: phase %s -> %s", *job_key(body), old_phase.value if old_phase else None, new.phase.value)
    ready = next((c for c in new.conditions if c.type == ConditionType.READY.value), None)
    before = next((c for c in (current.conditions if current else []) if c.type == ConditionType.READY.value), None)
    if (
        ready is not None
        and ready.reason == Reason.RENDEZVOUS_CONFLICT.value
        and (before is None or before.message != ready.message)
    ):  # a rank cannot join its own rendezvous: say so while it retries
        kube.post_event(body, "Warning", ready.reason, ready.message or "")
    if blocker is not None and (blocker_before is None or blocker.cause != blocker_before.cause):
        kube.post_event(body, "Warning", blocker.reason, blocker.describe())  # why pods wait: once per cause
    if problem is not None:  # a new refusal (InvalidSpec, ImmutableFieldChanged): say why, once
        conditions = current.conditions if current is not None else []
        previous = next((c for c in conditions if c.type == ConditionType.SPEC_VALID.value), None)
        if previous is None or previous.message != problem.message:
            kube.post_event(body, "Warning", problem.reason.value, problem.message)
