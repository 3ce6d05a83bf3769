"""Pure status derivation: an SFTJob's children in, its status out.

Everything here is a function of its arguments (``now`` included), so the handlers can call it
on every change and patch only when the result differs. Progress comes from the checkpoint
volume (the reporter's summary); Succeeded comes from the launcher's completion marker, Failed
from the trainer's restarts (past spec.maxRestarts) or a configuration it rejected. What the pods
say is read by pod_facts, whether training is over by training_outcome, the clock-driven policies
are judged by run_policies; this module assembles the status from their answers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sft_core.progress import TrainingProgress
from sft_models.models import (
    Condition,
    ConditionType,
    Phase,
    Reason,
    RestartBackoff,
    SFTJobStatus,
)
from sft_operator.conditions import set_condition
from sft_operator.pod_facts import (
    Blocker,
    count_node_restarts,
    gated_pod,
    pod_blocker,
    rendezvous_conflict,
    running_pods,
)
from sft_operator.render import accepted_spec
from sft_operator.run_policies import (
    RunPolicy,
    deadline_exceeded,
    describe_backoff,
    group_restart_plan,
    held_back,
    stall_restart_plan,
    startup_timed_out,
)
from sft_operator.spec_checks import SpecProblem, VolumeCheck, spec_condition
from sft_operator.training_outcome import RENDEZVOUS_CONFLICT_MESSAGE, exported_condition, training_verdict


def _finished(
    current: SFTJobStatus,
    conditions: list[Condition],
    facts: dict[str, Any],
    *,
    phase: Phase,
    reason: Reason,
    message: str,
    now: str,
    generation: int | None,
) -> SFTJobStatus:
    """The status of a job whose training is over (Succeeded or Failed by training)."""
    succeeded = phase is Phase.SUCCEEDED
    conditions = set_condition(
        conditions, ConditionType.COMPLETE.value, succeeded, reason.value, message, now, generation
    )
    conditions = set_condition(
        conditions, ConditionType.FAILED.value, not succeeded, reason.value, message, now, generation
    )
    conditions = set_condition(
        conditions,
        ConditionType.READY.value,
        False,
        Reason.FINISHED.value,
        "training is over; pods scaled to 0",
        now,
        generation,
    )
    return current.model_copy(
        update={**facts, "phase": phase, "conditions": conditions, "completion_time": current.completion_time or now}
    )


def download_retry(progress: TrainingProgress | None) -> str | None:
    """A remote source whose download failed and is being retried: the Ready message."""
    for download in (progress.downloads or []) if progress is not None else []:
        if download.error and download.state not in ("Done", "Failed"):
            return f"{download.field} ({download.source}): {download.error}; retrying"
    return None


def _invalid_spec(
    current: SFTJobStatus,
    conditions: list[Condition],
    facts: dict[str, Any],
    problem: SpecProblem,
    now: str,
    generation: int | None,
) -> SFTJobStatus:
    """A spec the operator refused before creating any pod: Failed until the spec is fixed."""
    conditions = set_condition(
        conditions, ConditionType.FAILED.value, True, problem.reason.value, problem.message, now, generation
    )
    conditions = set_condition(
        conditions,
        ConditionType.READY.value,
        False,
        problem.reason.value,
        "no pods: the spec is invalid",
        now,
        generation,
    )
    return current.model_copy(
        update={
            **facts,
            "phase": Phase.FAILED,
            "conditions": conditions,
            "ready_nodes": 0,
            "nodes": f"0/{facts['total_nodes']}",
        }
    )


@dataclass(frozen=True)
class LiveReady:
    """The Ready condition of a live job before its message is written: ``head`` says what runs
    (with a download retry or a rendezvous conflict), ``blocker`` the pod a pending job waits for."""

    status: bool
    reason: str
    head: str
    blocker: Blocker | None


def ready_message(ready: LiveReady, backoff: RestartBackoff | None) -> str:
    """The Ready message of a live job, the only place it is written: what runs, then the
    restart a backoff holds back, then the pod the job waits for (last: it may be long)."""
    message = ready.head
    if backoff is not None:
        message += f"; {describe_backoff(backoff)}"
    if ready.blocker is not None:
        message += f"; waiting for {ready.blocker.describe()}"
    return message


def _live(
    current: SFTJobStatus,
    conditions: list[Condition],
    facts: dict[str, Any],
    statefulset: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    volume: VolumeCheck | None,
    now: str,
    generation: int | None,
) -> tuple[SFTJobStatus, LiveReady]:
    """Pending, Running or Suspended: what the StatefulSet and its pods say."""
    ready, nnodes = facts["ready_nodes"], facts["total_nodes"]
    if any(c.type == ConditionType.FAILED.value for c in conditions):
        conditions = set_condition(
            conditions, ConditionType.FAILED.value, False, Reason.VALID.value, "", now, generation
        )
    suspended = statefulset is not None and ((statefulset.get("spec") or {}).get("replicas") == 0)
    if suspended:
        phase = Phase.SUSPENDED
    elif statefulset is not None and ready == nnodes:
        phase = Phase.RUNNING
    else:
        phase = Phase.PENDING
    conditions = set_condition(
        conditions,
        ConditionType.SUSPENDED.value,
        suspended,
        Reason.SUSPENDED.value if suspended else Reason.NOT_SUSPENDED.value,
        "scaled to 0 pods by spec.suspend" if suspended else "",
        now,
        generation,
    )
    conflict = rendezvous_conflict(pods) if phase is Phase.PENDING and statefulset is not None else None
    retrying = download_retry(facts["progress"]) if phase is Phase.RUNNING else None
    running = f"{ready}/{nnodes} pods running"
    blocker = None
    if retrying is not None:
        ready_reason, head = Reason.DOWNLOAD_RETRYING.value, f"{running}; {retrying}"
    elif phase is Phase.RUNNING:
        ready_reason, head = Reason.ALL_NODES_RUNNING.value, running
    elif suspended:
        ready_reason, head = Reason.SUSPENDED.value, "suspended"
    elif conflict is not None:
        ready_reason = Reason.RENDEZVOUS_CONFLICT.value
        head = f"{running}; {RENDEZVOUS_CONFLICT_MESSAGE}: {conflict.describe()}"
    else:
        ready_reason, head = Reason.NODES_PENDING.value, running
        blocker = pod_blocker(pods, nnodes) if statefulset is not None else None
    live_ready = LiveReady(phase is Phase.RUNNING and retrying is None, ready_reason, head, blocker)
    conditions = set_condition(
        conditions,
        ConditionType.READY.value,
        live_ready.status,
        ready_reason,
        ready_message(live_ready, None),
        now,
        generation,
    )
    gated = gated_pod(pods, nnodes) if statefulset is not None and not suspended else None
    if gated is not None or any(c.type == ConditionType.QUEUED.value for c in conditions):
        conditions = set_condition(
            conditions,
            ConditionType.QUEUED.value,
            gated is not None,
            Reason.SCHEDULING_GATED.value if gated is not None else Reason.NOT_GATED.value,
            f"held back by a scheduling gate (a queue such as Kueue admits the pods): {gated}" if gated else "",
            now,
            generation,
        )
    if volume is not None:
        conditions = set_condition(
            conditions,
            ConditionType.CHECKPOINT_VOLUME.value,
            volume.ok,
            volume.reason.value,
            volume.message,
            now,
            generation,
        )
    start_time = current.start_time
    if phase is Phase.RUNNING and start_time is None:
        start_time = now
    status = current.model_copy(update={**facts, "phase": phase, "conditions": conditions, "start_time": start_time})
    return status, live_ready


def _with_backoff(
    live: SFTJobStatus, ready: LiveReady, plan: RestartBackoff, now: str, generation: int | None
) -> SFTJobStatus:
    """The status with the held-back restart in status.restartBackoff and the Ready message."""
    conditions = set_condition(
        live.conditions,
        ConditionType.READY.value,
        ready.status,
        ready.reason,
        ready_message(ready, plan),
        now,
        generation,
    )
    return live.model_copy(update={"restart_backoff": plan, "conditions": conditions})


@dataclass(frozen=True)
class DerivedStatus:
    """The derived status, and the pod its Ready message says the job waits for (structured:
    the blocker Event is posted once per cause, and the message is never read back)."""

    status: SFTJobStatus
    blocker: Blocker | None = None


def derive_status(
    current: SFTJobStatus | None,
    *,
    generation: int | None,
    policy: RunPolicy,
    statefulset: dict[str, Any] | None,
    pods: Iterable[dict[str, Any]],
    problem: SpecProblem | None,
    volume: VolumeCheck | None,
    now: str,
    progress: TrainingProgress | None = None,
    stall: str | None = None,
) -> DerivedStatus:
    """The job's status from what exists.

    ``stall``: the operator restarts every rank of a stalled job now (why); it counts as a
    failure. Deadline and start-up timeout are judged against ``now``, and so is the backoff
    that holds back a group restart (status.restartBackoff; the policy's stall timeout for a
    stall's).

    ``policy.nnodes`` is the spec's; once the StatefulSet exists, the topology it was created with
    wins (a refused change to nnodes does not change what runs). Suspension is read from the
    StatefulSet too: replicas 0 means suspended, whatever the spec says right now.
    ``volume`` None keeps the CheckpointVolume condition as it is (pod events do not re-read the
    claim).
    """
    current = current or SFTJobStatus()
    pods = list(pods)
    nnodes = policy.nnodes
    if statefulset is not None:
        accepted = accepted_spec(statefulset) or {}
        nnodes = int(accepted.get("nnodes") or nnodes)
    ready = running_pods(pods, nnodes) if statefulset is not None else 0
    ledger = count_node_restarts(current.node_restarts, pods)
    facts: dict[str, Any] = {
        "observed_generation": generation,
        "ready_nodes": ready,
        "total_nodes": nnodes,
        "nodes": f"{ready}/{nnodes}",
        "stall_restarts": current.stall_restarts + (1 if stall else 0),
        "restart_backoff": None,
        "preemptions": max([current.preemptions, *(entry.preemptions for entry in ledger)]),
        "node_restarts": ledger,
        "progress": progress if progress is not None else current.progress,
    }
    facts["restarts"] = max(
        [current.restarts, *(entry.failures + facts["stall_restarts"] for entry in ledger), facts["stall_restarts"]]
    )
    conditions = spec_condition(list(current.conditions), problem, now, generation)
    if current.training_over:
        # For good: only the facts move. observedGeneration follows the spec (a later change was
        # seen, and refused or changing nothing); GitOps health checks wait for it.
        return DerivedStatus(current.model_copy(update={**facts, "conditions": conditions}))
    if policy.export_uri is not None:
        exported = exported_condition(facts["progress"])
        if exported is not None:
            conditions = set_condition(
                conditions, ConditionType.EXPORTED.value, exported[0], exported[1].value, exported[2], now, generation
            )
    verdict = training_verdict(
        facts["progress"],
        pods if statefulset is not None else [],
        facts["restarts"],
        policy.max_restarts,
        policy.export_uri,
    )
    if verdict is not None:
        phase, reason, message = verdict
        return DerivedStatus(
            _finished(
                current, conditions, facts, phase=phase, reason=reason, message=message, now=now, generation=generation
            )
        )
    if problem is not None and problem.reason is Reason.INVALID_SPEC and statefulset is None:
        return DerivedStatus(_invalid_spec(current, conditions, facts, problem, now, generation))
    live, live_ready = _live(current, conditions, facts, statefulset, pods, volume, now, generation)
    timed_out = deadline_exceeded(live, now, policy.active_deadline_s)
    reason = Reason.DEADLINE_EXCEEDED
    if timed_out is None and problem is None:
        timed_out, reason = startup_timed_out(live, now, policy.startup_timeout_s, pods), Reason.STARTUP_TIMEOUT
    if timed_out is not None:
        return DerivedStatus(
            _finished(
                live,
                live.conditions,
                facts,
                phase=Phase.FAILED,
                reason=reason,
                message=timed_out,
                now=now,
                generation=generation,
            )
        )
    if stall is None and statefulset is not None and live.phase is not Phase.SUSPENDED:
        plan = group_restart_plan(pods, live.restarts) or stall_restart_plan(
            live, now, policy.stall_timeout_s, policy.startup_timeout_s
        )
        if held_back(plan, now):
            assert plan is not None
            return DerivedStatus(_with_backoff(live, live_ready, plan, now, generation), live_ready.blocker)
    return DerivedStatus(live, live_ready.blocker)


def phase_event_message(status: SFTJobStatus, problem: SpecProblem | None) -> str:
    """The Event message of a phase change: why it ended, why it waits, or how many pods run."""
    if problem is not None and status.phase is Phase.FAILED:
        return problem.message
    if status.training_over:
        wanted = ConditionType.COMPLETE.value if status.phase is Phase.SUCCEEDED else ConditionType.FAILED.value
        condition = next((c for c in status.conditions if c.type == wanted), None)
        if condition is not None:
            return condition.message or ""
    if status.phase is Phase.SUSPENDED:
        full = status.progress.latest_full_state if status.progress is not None else None
        where = full.path if full is not None else "the latest full state, if one was saved"
        return f"suspended by spec.suspend: pods scaled to 0; unsuspending resumes from {where}"
    return f"{status.nodes} pods running"
