"""The run policies: pure functions of the job's facts, its ``RunPolicy`` and ``now``.

Deadline (spec.activeDeadlineSeconds), start-up timeout, stall, the backoff between the
operator's group restarts, and the time to live of a finished job. Each answers why it applies
(a message) or None; the status derivation and the policy clock act on the answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sft_core.progress import Stage
from sft_core.wire import parse_rfc3339, rfc3339
from sft_models.models import Condition, ConditionType, Phase, Reason, RestartBackoff, SFTJobSpec, SFTJobStatus
from sft_operator.pod_facts import last_trainer_termination, pod_blocker, ranks_left_behind


@dataclass(frozen=True, kw_only=True)
class RunPolicy:
    """What the spec asks of a run, read once per derivation: its size, the bounds the policies
    enforce (None: unbounded) and where the final checkpoint must be exported before it Succeeds."""

    nnodes: int
    max_restarts: int | None
    active_deadline_s: int | None
    startup_timeout_s: int | None
    stall_timeout_s: int | None
    ttl_s: int | None
    export_uri: str | None

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> RunPolicy:
        """The policy of a job's spec as its body has it. Field by field, each falling back to
        the model's default: the status of an invalid spec (or one a CRD installed without
        defaulting left bare) is derived too, so one bad field must not cost the others."""
        export = spec.get("export")
        uri = export.get("uri") if isinstance(export, Mapping) else None
        nnodes = _spec_int(spec, "nnodes")
        return cls(
            nnodes=1 if nnodes is None else nnodes,  # never None: the model's default is 1
            max_restarts=_spec_int(spec, "max_restarts"),
            active_deadline_s=_spec_int(spec, "active_deadline_seconds"),
            startup_timeout_s=_spec_int(spec, "startup_timeout_seconds"),
            stall_timeout_s=_spec_int(spec, "stall_timeout_seconds"),
            ttl_s=_spec_int(spec, "ttl_seconds_after_finished"),
            export_uri=uri if isinstance(uri, str) else None,
        )


def _spec_int(spec: Mapping[str, Any], field: str) -> int | None:
    """An integer spec field as the body has it, else the model's default."""
    info = SFTJobSpec.model_fields[field]
    value = spec.get(info.alias or field)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    default: int | None = info.default
    return default


def _condition(status: SFTJobStatus, type_: ConditionType) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_.value), None)


def _since(status: SFTJobStatus, type_: ConditionType, value: str) -> datetime | None:
    """When the condition last became ``value`` (None if it is not ``value`` now)."""
    condition = _condition(status, type_)
    return (
        parse_rfc3339(condition.last_transition_time) if condition is not None and condition.status == value else None
    )


def deadline_exceeded(live: SFTJobStatus, now: str, deadline_s: int | None) -> str | None:
    """The message of a job past spec.activeDeadlineSeconds, counted from when it first ran or
    was last resumed (as a Kubernetes Job's), or None."""
    if deadline_s is None or live.start_time is None or live.phase not in (Phase.RUNNING, Phase.PENDING):
        return None
    since = max(
        parse_rfc3339(live.start_time), _since(live, ConditionType.SUSPENDED, "False") or parse_rfc3339(live.start_time)
    )
    elapsed = (parse_rfc3339(now) - since).total_seconds()
    if elapsed <= deadline_s:
        return None
    return (
        f"ran {int(elapsed)} s since {rfc3339(since)}, past spec.activeDeadlineSeconds ({deadline_s} s); "
        "the pods were stopped with SIGTERM (an on-demand checkpoint is saved) and the checkpoints stay: "
        "a job created again with the same checkpoints resumes from them"
    )


def startup_timed_out(live: SFTJobStatus, now: str, timeout_s: int | None, pods: list[dict[str, Any]]) -> str | None:
    """The message of a job whose pods did not all run within spec.startupTimeoutSeconds of its
    creation, its resume, the loss of a pod or the lifting of a queue's scheduling gates, or None.
    While a gate holds a pod back (the job waits in a queue) it does not run."""
    if timeout_s is None or live.phase is not Phase.PENDING or _since(live, ConditionType.QUEUED, "True") is not None:
        return None
    starts = [
        _since(live, ConditionType.READY, "False"),
        _since(live, ConditionType.SUSPENDED, "False"),
        _since(live, ConditionType.QUEUED, "False"),
    ]
    since = max((start for start in starts if start is not None), default=None)
    if since is None or (parse_rfc3339(now) - since).total_seconds() <= timeout_s:
        return None
    blocker = pod_blocker(pods, live.total_nodes)
    why = blocker.describe() if blocker is not None else f"{live.nodes} pods running"
    return f"not every pod ran within spec.startupTimeoutSeconds ({timeout_s} s): {why}"


def stall_limit_s(status: SFTJobStatus, stall_timeout_s: int | None, startup_timeout_s: int | None) -> int | None:
    """How long a running job may go without a new fact on the volume before it counts as
    stalled, or None when nothing bounds its current stage. Training: spec.stallTimeoutSeconds.
    Initializing (pods up, no step of this run yet: model loading, rendezvous, the first step):
    spec.startupTimeoutSeconds if longer, since loading a large model from network storage may
    take far longer than a step; a real-node run on a loaded machine was restarted in a loop
    before its first step with the stall timeout alone. Saving: the same longer bound. Data
    processing: exempt (the launcher's own watchdog bounds it)."""
    progress = status.progress
    if stall_timeout_s is None or status.phase is not Phase.RUNNING or progress is None:
        return None
    if progress.stage is Stage.TRAINING:
        return stall_timeout_s
    if progress.stage in (Stage.INITIALIZING, Stage.SAVING) and startup_timeout_s is not None:
        # A save of a large model to network storage may take many minutes too; a rank frozen in a
        # save must not hold the GPUs forever.
        return max(stall_timeout_s, startup_timeout_s)
    return None


def stalled(
    status: SFTJobStatus, now: str, stall_timeout_s: int | None, startup_timeout_s: int | None = None
) -> str | None:
    """Why a running job counts as stalled: no new step in the metrics log (nothing newer on the
    volume) for stall_limit_s since the step or since every pod ran. None otherwise."""
    limit = stall_limit_s(status, stall_timeout_s, startup_timeout_s)
    last = _last_training_fact(status)
    if limit is None or last is None or status.progress is None:
        return None
    idle = (parse_rfc3339(now) - last).total_seconds()
    if idle <= limit:
        return None
    progress = status.progress
    at = f"{progress.samples_seen} samples, epoch {progress.epoch}"
    bound = (
        f"spec.stallTimeoutSeconds: {stall_timeout_s}"
        if progress.stage is Stage.TRAINING
        else f"before the first step spec.startupTimeoutSeconds bounds it: {limit}"
        if progress.stage is Stage.INITIALIZING
        else f"while saving spec.startupTimeoutSeconds bounds it: {limit}"
    )
    return (
        f"no training step for {int(idle)} s ({bound}); last fact on the volume at {rfc3339(last)} "
        f"({progress.stage.value}, {at}); restarting every rank from the latest full state"
    )


def _last_training_fact(status: SFTJobStatus) -> datetime | None:
    """What a stall is counted from: the newest fact on the volume, or when every pod ran."""
    progress = status.progress
    running_since = _since(status, ConditionType.READY, "True")
    updated = parse_rfc3339(progress.last_update_time) if progress is not None and progress.last_update_time else None
    facts = [t for t in (running_since, updated) if t]
    return max(facts) if facts else None


RESTART_BACKOFF_INITIAL_S = 10
RESTART_BACKOFF_CAP_S = 300
RANKS_LEFT_BEHIND = "RanksLeftBehind"


def restart_backoff_s(restart: int) -> int:
    """How long the operator holds back its ``restart``-th group restart (counted as
    status.restarts counts: restarts that lost work) after its cause: none for the first, then
    10 s doubling to 5 minutes (the kubelet's CrashLoopBackOff curve)."""
    if restart <= 1:
        return 0
    doublings = min(restart - 2, 5)  # 10 * 2**5 = 320 is past the cap already
    delay: int = min(RESTART_BACKOFF_INITIAL_S * 2**doublings, RESTART_BACKOFF_CAP_S)
    return delay


def group_restart_plan(pods: Iterable[dict[str, Any]], restarts: int) -> RestartBackoff | None:
    """The restart of every rank when a failure left ranks behind (ranks_left_behind), due the
    backoff after the failure ended; ``restarts`` already counts that failure. None when no rank
    is behind. The failed rank is restarted too: the kubelet has restarted its trainer in place by
    then, and that run joined the old group's rendezvous (still served by the rank-0 pod being
    replaced), where it would wait for peers that never come until the stall bound."""
    pods = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    failure = last_trainer_termination(pods, failures_only=True)
    if not ranks_left_behind(pods) or failure is None:
        return None
    group = sorted((p.get("metadata") or {}).get("name", "") for p in pods)
    restart = max(restarts, 1)
    delay = restart_backoff_s(restart)
    due = parse_rfc3339(failure.finished_at) + timedelta(seconds=delay)
    return RestartBackoff(
        reason=RANKS_LEFT_BEHIND, restart=restart, delay_seconds=delay, next_restart_at=rfc3339(due), ranks=group
    )


def stall_restart_plan(
    status: SFTJobStatus, now: str, stall_timeout_s: int | None, startup_timeout_s: int | None = None
) -> RestartBackoff | None:
    """The restart of every rank of a stalled job (stalled), due the backoff after the job counted
    as stalled (its last fact + stall_limit_s). None when it is not stalled."""
    last = _last_training_fact(status)
    limit = stall_limit_s(status, stall_timeout_s, startup_timeout_s)
    if limit is None or last is None or stalled(status, now, stall_timeout_s, startup_timeout_s) is None:
        return None
    restart = status.restarts + 1
    delay = restart_backoff_s(restart)
    due = last + timedelta(seconds=limit + delay)
    return RestartBackoff(
        reason=Reason.STALLED.value, restart=restart, delay_seconds=delay, next_restart_at=rfc3339(due)
    )


def held_back(plan: RestartBackoff | None, now: str) -> bool:
    """Whether the backoff still holds the planned restart back."""
    return plan is not None and parse_rfc3339(now) < parse_rfc3339(plan.next_restart_at)


def describe_backoff(plan: RestartBackoff) -> str:
    what = (
        f"restarting every rank ({', '.join(plan.ranks)}) after a rank failed"
        if plan.reason == RANKS_LEFT_BEHIND
        else "restarting every rank (stalled)"
    )
    return (
        f"{what} at {plan.next_restart_at}: backoff {plan.delay_seconds} s before restart {plan.restart} "
        f"({RESTART_BACKOFF_INITIAL_S} s doubling to {RESTART_BACKOFF_CAP_S} s)"
    )


# --- time to live of a finished job -----------------------------------------------------------


def finished_for_longer_than(status: SFTJobStatus, at: str, ttl_s: int | None) -> str | None:
    """Why a Succeeded or Failed job has outlived spec.ttlSecondsAfterFinished, or None."""
    if ttl_s is None or status.phase not in (Phase.SUCCEEDED, Phase.FAILED):
        return None
    failed = _condition(status, ConditionType.FAILED)
    finished = status.completion_time or (failed.last_transition_time if failed is not None else None)
    if finished is None:
        return None
    age = (parse_rfc3339(at) - parse_rfc3339(finished)).total_seconds()
    if age < ttl_s:
        return None
    return f"{status.phase.value} at {finished}, {int(age)} s ago (spec.ttlSecondsAfterFinished: {ttl_s})"
