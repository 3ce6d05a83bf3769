"""Pure status derivation: an SFTJob's children in, its status out.

Everything here is a function of its arguments (``now`` included), so the handlers can call it
on every change and patch only when the result differs. Progress comes from the checkpoint
volume (the reporter's summary); Succeeded comes from the launcher's completion marker, Failed
from the trainer's restarts (past spec.maxRestarts) or a configuration it rejected.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sft_core import contract
from sft_core.checkpoints import HF_FORMAT_DIR
from sft_core.progress import CheckpointExport, Stage, TrainingProgress
from sft_core.wire import parse_rfc3339, rfc3339
from sft_models.models import (
    MAPPED_TRAINING_ARGS,
    AccessMode,
    Condition,
    ConditionType,
    NodeRestarts,
    Phase,
    Reason,
    RestartBackoff,
    SFTJobStatus,
)
from sft_operator.render import accepted_spec


@dataclass(frozen=True)
class SpecProblem:
    """Why the operator refused the current spec (reason: InvalidSpec or ImmutableFieldChanged)."""

    reason: Reason
    message: str


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> list[Condition]:
    """conditions with ``type_`` set; lastTransitionTime moves only when the status flips."""
    new_status = "True" if status else "False"
    previous = next((c for c in conditions if c.type == type_), None)
    since = previous.last_transition_time if previous is not None and previous.status == new_status else now
    updated = Condition(
        type=type_,
        status=new_status,
        reason=reason,
        message=message or None,
        last_transition_time=since,
        observed_generation=generation,
    )
    others = [c for c in conditions if c.type != type_]
    return sorted([*others, updated], key=lambda c: c.type)


def _pod_ordinal(pod: dict[str, Any]) -> int | None:
    try:
        return contract.node_rank_from_pod_name(pod["metadata"]["name"])
    except (KeyError, ValueError):
        return None


def _ordinal_or(pod: dict[str, Any], default: int) -> int:
    """The pod's ordinal, or ``default`` for a pod without one (sorted last)."""
    ordinal = _pod_ordinal(pod)
    return default if ordinal is None else ordinal


def running_pods(pods: Iterable[dict[str, Any]], total: int) -> int:
    """Pods of the current topology (ordinal < total) that run and are not being deleted."""
    count = 0
    for pod in pods:
        ordinal = _pod_ordinal(pod)
        if ordinal is None or ordinal >= total:
            continue
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        if (pod.get("status") or {}).get("phase") == "Running" and not _trainer_down(pod):
            count += 1
    return count


def _trainer_down(pod: dict[str, Any]) -> bool:
    """The trainer container has ended or waits to restart (CrashLoopBackOff) while the pod
    itself runs on (its reporter sidecar keeps the pod phase Running)."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == contract.TRAINER_CONTAINER:
            state = status.get("state") or {}
            return bool(state.get("terminated") or state.get("waiting"))
    return False


def _trainer_terminations(pod: dict[str, Any], container: str = contract.TRAINER_CONTAINER) -> list[dict[str, Any]]:
    """A container's terminations the pod still shows (current state, then last): the trainer's
    unless told otherwise."""
    found = []
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") != container:
            continue
        for state in (status.get("state"), status.get("lastState")):
            terminated = (state or {}).get("terminated")
            if terminated and terminated.get("finishedAt"):
                found.append(terminated)
    return found


def is_preemption(exit_code: int, pod_deleted: bool) -> bool:
    """A clean stop that loses no work: the launcher saved and exited 3, or someone deleted the
    pod (drain, preemption, suspend), whatever the exit code its shutdown ended with."""
    return exit_code == contract.EXIT_PREEMPTED or pod_deleted


def count_node_restarts(ledger: Iterable[NodeRestarts], pods: Iterable[dict[str, Any]]) -> list[NodeRestarts]:
    """The per-node ledger with every termination the pods show that it has not counted yet.

    A termination is identified by its node and finishedAt: pods are recreated (restartCount
    starts at 0 again) and show only their newest two terminations, so the ledger remembers the
    newest one counted per node. Exit 0 (an idle pod scaled down) counts as neither."""
    by_node = {entry.node: entry for entry in ledger}
    for pod in pods:
        node = _pod_ordinal(pod)
        if node is None:
            continue
        deleted = bool((pod.get("metadata") or {}).get("deletionTimestamp"))
        entry = by_node.get(node) or NodeRestarts(node=node)
        for terminated in sorted(_trainer_terminations(pod), key=lambda t: t["finishedAt"]):
            if entry.last_exit_time is not None and terminated["finishedAt"] <= entry.last_exit_time:
                continue
            code = int(terminated.get("exitCode") or 0)
            update: dict[str, Any] = {"last_exit_code": code, "last_exit_time": terminated["finishedAt"]}
            if code == contract.EXIT_OK:  # finished, or an idle pod scaled down: neither
                pass
            elif code == contract.EXIT_BAD_CONFIG:  # rejected before training: nothing lost, and
                pass  # the job fails ConfigRejected instead of restarting: not a restart either
            elif is_preemption(code, deleted):
                update["preemptions"] = entry.preemptions + 1
            else:
                update["failures"] = entry.failures + 1
            entry = entry.model_copy(update=update)
        if entry.last_exit_time is not None:  # nodes that never ended stay out of the status
            by_node[node] = entry
    return [by_node[node] for node in sorted(by_node)]


@dataclass(frozen=True)
class VolumeCheck:
    """Whether the checkpoint claim can serve this job (the CheckpointVolume condition)."""

    ok: bool
    reason: Reason
    message: str


def check_checkpoint_claim(nnodes: int, claim: dict[str, Any] | None, claim_name: str,
                           created_by_other: str | None = None) -> VolumeCheck:
    """``created_by_other``: the uid of the job that created the claim, when the job asks
    deleteWithJob of a claim it did not create (it keeps the claim: said in the message)."""
    if claim is None:
        return VolumeCheck(False, Reason.CLAIM_NOT_FOUND, f"PersistentVolumeClaim {claim_name} does not exist; pods wait for it")
    modes = (claim.get("spec") or {}).get("accessModes") or []
    if nnodes > 1 and AccessMode.READ_WRITE_MANY.value not in modes:
        return VolumeCheck(
            False,
            Reason.CLAIM_NOT_READ_WRITE_MANY,
            f"PersistentVolumeClaim {claim_name} is {', '.join(modes) or 'without access modes'}; nnodes > 1 "
            "needs ReadWriteMany: every rank reads full_state/ when it resumes",
        )
    if created_by_other is not None:
        return VolumeCheck(True, Reason.CLAIM_FOUND,
                           f"PersistentVolumeClaim {claim_name}, created by another SFTJob (uid {created_by_other}): kept "
                           "when this job is deleted (spec.checkpoints.deleteWithJob applies only to a claim the job "
                           "created)")
    return VolumeCheck(True, Reason.CLAIM_FOUND, f"PersistentVolumeClaim {claim_name}")


@dataclass(frozen=True)
class Termination:
    """How a trainer container last ended."""

    pod: str
    exit_code: int
    reason: str
    message: str
    finished_at: str

    def describe(self) -> str:
        text = f"pod {self.pod}: {self.reason or 'Error'} (exit code {self.exit_code})"
        return f"{text}: {self.message.strip()}" if self.message.strip() else text


def last_trainer_termination(pods: Iterable[dict[str, Any]], failures_only: bool = False,
                             container: str = contract.TRAINER_CONTAINER) -> Termination | None:
    """The newest termination of a trainer container across the pods (current or last state);
    with ``failures_only``, the newest that lost work (not a preemption, not exit 0).
    ``container``: another container's (the transfer sidecar's)."""
    latest: Termination | None = None
    for pod in pods:
        name = (pod.get("metadata") or {}).get("name", "")
        deleted = bool((pod.get("metadata") or {}).get("deletionTimestamp"))
        for terminated in _trainer_terminations(pod, container):
            candidate = Termination(
                pod=name,
                exit_code=int(terminated.get("exitCode") or 0),
                reason=terminated.get("reason") or "",
                message=terminated.get("message") or "",
                finished_at=terminated.get("finishedAt") or "",
            )
            if failures_only and (candidate.exit_code == contract.EXIT_OK or is_preemption(candidate.exit_code, deleted)):
                continue
            if latest is None or candidate.finished_at > latest.finished_at:
                latest = candidate
    return latest


_TRAINING_ARG = re.compile(r"\btrainingArgs\.([a-z_]+)")


def name_spec_fields(message: str) -> str:
    """The launcher names TrainingArgs keys (``trainingArgs.data_path``); users wrote the spec:
    add the spec field each key comes from (``spec.dataPath (trainingArgs.data_path)``)."""

    def spec_name(match: re.Match[str]) -> str:
        key = match.group(1)
        source = MAPPED_TRAINING_ARGS.get(key)
        field = f"spec.{source}" if source else f"spec.extraArgs.{key}"
        return f"{field} ({match.group(0)})"

    return _TRAINING_ARG.sub(spec_name, message)


def spec_condition(
    conditions: list[Condition], problem: SpecProblem | None, now: str, generation: int | None
) -> list[Condition]:
    """SpecValid: True, or False with the refusal (InvalidSpec, ImmutableFieldChanged) until the
    spec is fixed or reverted; also once training is over, so a refused edit never looks accepted."""
    if problem is None:
        return set_condition(conditions, ConditionType.SPEC_VALID.value, True, Reason.VALID.value, "", now, generation)
    return set_condition(
        conditions, ConditionType.SPEC_VALID.value, False, problem.reason.value, problem.message, now, generation
    )


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
    conditions = set_condition(conditions, ConditionType.COMPLETE.value, succeeded, reason.value, message, now, generation)
    conditions = set_condition(conditions, ConditionType.FAILED.value, not succeeded, reason.value, message, now, generation)
    conditions = set_condition(
        conditions, ConditionType.READY.value, False, Reason.FINISHED.value, "training is over; pods scaled to 0",
        now, generation,
    )
    return current.model_copy(
        update={**facts, "phase": phase, "conditions": conditions, "completion_time": current.completion_time or now}
    )


def training_verdict(
    progress: TrainingProgress | None,
    pods: list[dict[str, Any]],
    restarts: int,
    max_restarts: int | None,
    export_uri: str | None = None,
) -> tuple[Phase, Reason, str] | None:
    """Whether training is over, from the volume (completion) and the trainer's exits: the
    phase, reason and message it ends with, or None while it goes on. With ``export_uri`` the
    job Succeeds only once its final checkpoint is exported there."""
    if progress is not None and progress.stage is Stage.COMPLETED:
        message = f"trained {progress.num_epochs} epochs"
        if progress.latest_checkpoint:
            message += f"; final checkpoint hf_format/{progress.latest_checkpoint}"
        if export_uri is not None:
            final = final_export(progress)
            if final is None:
                return None  # the transfer sidecar still uploads it (condition Exported says how it goes)
            message += f", exported to {final.uri}"
        return Phase.SUCCEEDED, Reason.TRAINING_COMPLETED, message
    fetch = last_trainer_termination(pods, container=contract.TRANSFER_CONTAINER)
    if fetch is not None and fetch.exit_code == contract.EXIT_BAD_CONFIG:
        # The transfer sidecar's one line names the field and the source.
        return Phase.FAILED, Reason.DOWNLOAD_FAILED, fetch.message.strip() or fetch.describe()
    termination = last_trainer_termination(pods)
    if termination is not None and termination.exit_code == contract.EXIT_BAD_CONFIG:
        return (Phase.FAILED, Reason.CONFIG_REJECTED,
                "the launcher rejected its configuration, a retry cannot help: " + name_spec_fields(termination.describe()))
    if max_restarts is not None and restarts > max_restarts:
        failure = last_trainer_termination(pods, failures_only=True)
        last = failure.describe() if failure is not None else "no termination recorded"
        counted = f"the trainer failed {restarts} times (spec.maxRestarts: {max_restarts}; preemptions do not count)"
        if failure is not None and failure.exit_code == contract.EXIT_RENDEZVOUS_CONFLICT:
            return Phase.FAILED, Reason.RENDEZVOUS_CONFLICT, f"{RENDEZVOUS_CONFLICT_MESSAGE}; {counted}; last: {last}"
        return Phase.FAILED, Reason.TOO_MANY_RESTARTS, f"{counted}; last: {last}"
    return None


def final_export(progress: TrainingProgress) -> CheckpointExport | None:
    """The export of the job's final checkpoint (its newest hf_format one), once uploaded."""
    if not progress.latest_checkpoint:
        return None
    wanted = f"{HF_FORMAT_DIR}/{progress.latest_checkpoint}"
    return next((e for e in progress.exports or [] if e.checkpoint == wanted), None)


def exported_condition(progress: TrainingProgress | None) -> tuple[bool, Reason, str] | None:
    """Condition Exported (spec.export): None until there is something to say."""
    if progress is None:
        return None
    exports = progress.exports or []
    if progress.stage is Stage.COMPLETED and final_export(progress) is not None:
        final = final_export(progress)
        assert final is not None
        return True, Reason.EXPORTED, f"{len(exports)} checkpoint(s) exported; final: {final.uri}"
    if progress.export_error:
        return False, Reason.EXPORT_FAILING, f"retrying with backoff: {progress.export_error}"
    if progress.stage is Stage.COMPLETED:
        return False, Reason.EXPORT_PENDING, f"training is over; uploading the final checkpoint hf_format/{progress.latest_checkpoint}"
    if exports:
        return False, Reason.EXPORT_PENDING, f"{len(exports)} checkpoint(s) exported; newest: {exports[-1].uri}"
    return None


def download_retry(progress: TrainingProgress | None) -> str | None:
    """A remote source whose download failed and is being retried: the Ready message."""
    for download in (progress.downloads or []) if progress is not None else []:
        if download.error and download.state not in ("Done", "Failed"):
            return f"{download.field} ({download.source}): {download.error}; retrying"
    return None


RENDEZVOUS_CONFLICT_MESSAGE = "another job holds this job's rendezvous (spec.rdzvPort)"


def rendezvous_conflict(pods: list[dict[str, Any]]) -> Termination | None:
    """The trainer's newest termination when it is a rendezvous conflict (exit 5) and the
    trainer has not run since: why a job that retries waits."""
    newest = last_trainer_termination(pods)
    if newest is None or newest.exit_code != contract.EXIT_RENDEZVOUS_CONFLICT:
        return None
    pod = next((p for p in pods if (p.get("metadata") or {}).get("name") == newest.pod), None)
    return newest if pod is not None and _trainer_down(pod) else None


def _invalid_spec(
    current: SFTJobStatus, conditions: list[Condition], facts: dict[str, Any], problem: SpecProblem, now: str,
    generation: int | None,
) -> SFTJobStatus:
    """A spec the operator refused before creating any pod: Failed until the spec is fixed."""
    conditions = set_condition(
        conditions, ConditionType.FAILED.value, True, problem.reason.value, problem.message, now, generation
    )
    conditions = set_condition(
        conditions, ConditionType.READY.value, False, problem.reason.value, "no pods: the spec is invalid", now,
        generation,
    )
    return current.model_copy(
        update={**facts, "phase": Phase.FAILED, "conditions": conditions, "ready_nodes": 0,
                "nodes": f"0/{facts['total_nodes']}"}
    )


def _live(
    current: SFTJobStatus, conditions: list[Condition], facts: dict[str, Any], statefulset: dict[str, Any] | None,
    pods: list[dict[str, Any]], volume: VolumeCheck | None, now: str, generation: int | None,
) -> SFTJobStatus:
    """Pending, Running or Suspended: what the StatefulSet and its pods say."""
    ready, nnodes = facts["ready_nodes"], facts["total_nodes"]
    if any(c.type == ConditionType.FAILED.value for c in conditions):
        conditions = set_condition(conditions, ConditionType.FAILED.value, False, Reason.VALID.value, "", now, generation)
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
    if retrying is not None:
        ready_reason, ready_message = Reason.DOWNLOAD_RETRYING.value, f"{ready}/{nnodes} pods running; {retrying}"
    elif phase is Phase.RUNNING:
        ready_reason, ready_message = Reason.ALL_NODES_RUNNING.value, f"{ready}/{nnodes} pods running"
    elif suspended:
        ready_reason, ready_message = Reason.SUSPENDED.value, "suspended"
    elif conflict is not None:
        ready_reason = Reason.RENDEZVOUS_CONFLICT.value
        ready_message = f"{ready}/{nnodes} pods running; {RENDEZVOUS_CONFLICT_MESSAGE}: {conflict.describe()}"
    else:
        ready_reason, ready_message = Reason.NODES_PENDING.value, f"{ready}/{nnodes} pods running"
        blocker = pod_blocker(pods, nnodes) if statefulset is not None else None
        if blocker is not None:
            ready_message += f"; waiting for {blocker}"
    conditions = set_condition(
        conditions, ConditionType.READY.value, phase is Phase.RUNNING and retrying is None, ready_reason, ready_message,
        now, generation,
    )
    gated = gated_pod(pods, nnodes) if statefulset is not None and not suspended else None
    if gated is not None or any(c.type == ConditionType.QUEUED.value for c in conditions):
        conditions = set_condition(
            conditions, ConditionType.QUEUED.value, gated is not None,
            Reason.SCHEDULING_GATED.value if gated is not None else Reason.NOT_GATED.value,
            f"held back by a scheduling gate (a queue such as Kueue admits the pods): {gated}" if gated else "",
            now, generation,
        )
    if volume is not None:
        conditions = set_condition(
            conditions, ConditionType.CHECKPOINT_VOLUME.value, volume.ok, volume.reason.value, volume.message, now,
            generation,
        )
    start_time = current.start_time
    if phase is Phase.RUNNING and start_time is None:
        start_time = now
    return current.model_copy(update={**facts, "phase": phase, "conditions": conditions, "start_time": start_time})


def ranks_left_behind(pods: Iterable[dict[str, Any]]) -> list[str]:
    """Pods whose trainer still runs from before another rank's newest failure: they wait in a
    collective for a peer that is gone, until NCCL's timeout. Restarting them at once restarts
    the whole group (they resume from the latest full state together)."""
    pods = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    failure = last_trainer_termination(pods, failures_only=True)
    if failure is None or failure.exit_code == contract.EXIT_BAD_CONFIG:
        return []
    behind = []
    for pod in pods:
        name = (pod.get("metadata") or {}).get("name", "")
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            started = ((status.get("state") or {}).get("running") or {}).get("startedAt")
            if status.get("name") == contract.TRAINER_CONTAINER and name != failure.pod and started \
                    and started < failure.finished_at:
                behind.append(name)
    return sorted(behind)


def _condition(status: SFTJobStatus, type_: ConditionType) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_.value), None)


def _since(status: SFTJobStatus, type_: ConditionType, value: str) -> datetime | None:
    """When the condition last became ``value`` (None if it is not ``value`` now)."""
    condition = _condition(status, type_)
    return parse_rfc3339(condition.last_transition_time) if condition is not None and condition.status == value else None


def pod_blocker(pods: Iterable[dict[str, Any]], nnodes: int) -> str | None:
    """Why the first pod that does not run waits, in the kubelet's or the scheduler's words:
    a container's waiting reason (ImagePullBackOff, CreateContainerConfigError, ...), else the
    pod's PodScheduled=False reason (Unschedulable: 0/12 nodes are available: ...)."""
    for pod in sorted(pods, key=lambda p: _ordinal_or(p, nnodes)):
        ordinal = _pod_ordinal(pod)
        if ordinal is None or ordinal >= nnodes or (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        name = (pod.get("metadata") or {}).get("name", "")
        status = pod.get("status") or {}
        for container in status.get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting")
            if waiting and waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
                text = f"pod {name}: {waiting['reason']}"
                return f"{text}: {waiting['message']}" if waiting.get("message") else text
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                text = f"pod {name}: {condition.get('reason') or 'Unschedulable'}"
                return f"{text}: {condition['message']}" if condition.get("message") else text
    return None


def deadline_exceeded(live: SFTJobStatus, now: str, deadline_s: int | None) -> str | None:
    """The message of a job past spec.activeDeadlineSeconds, counted from when it first ran or
    was last resumed (as a Kubernetes Job's), or None."""
    if deadline_s is None or live.start_time is None or live.phase not in (Phase.RUNNING, Phase.PENDING):
        return None
    since = max(parse_rfc3339(live.start_time), _since(live, ConditionType.SUSPENDED, "False") or parse_rfc3339(live.start_time))
    elapsed = (parse_rfc3339(now) - since).total_seconds()
    if elapsed <= deadline_s:
        return None
    return (f"ran {int(elapsed)} s since {rfc3339(since)}, past spec.activeDeadlineSeconds ({deadline_s} s); "
            "the pods were stopped with SIGTERM (an on-demand checkpoint is saved) and the checkpoints stay: "
            "a job created again with the same checkpoints resumes from them")


def gated_pod(pods: Iterable[dict[str, Any]], nnodes: int) -> str | None:
    """The first pod of the job a scheduling gate holds back (Kueue gates the pods of a queued
    workload until it admits them all), in the scheduler's words, or None."""
    for pod in sorted(pods, key=lambda p: _ordinal_or(p, nnodes)):
        ordinal = _pod_ordinal(pod)
        if ordinal is None or ordinal >= nnodes or (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        for condition in (pod.get("status") or {}).get("conditions") or []:
            if (condition.get("type"), condition.get("status"), condition.get("reason")) == (
                "PodScheduled", "False", "SchedulingGated"
            ):
                text = f"pod {(pod.get('metadata') or {}).get('name', '')}: SchedulingGated"
                return f"{text}: {condition['message']}" if condition.get("message") else text
    return None


def startup_timed_out(live: SFTJobStatus, now: str, timeout_s: int | None, pods: list[dict[str, Any]]) -> str | None:
    """The message of a job whose pods did not all run within spec.startupTimeoutSeconds of its
    creation, its resume, the loss of a pod or the lifting of a queue's scheduling gates, or None.
    While a gate holds a pod back (the job waits in a queue) it does not run."""
    if timeout_s is None or live.phase is not Phase.PENDING or _since(live, ConditionType.QUEUED, "True") is not None:
        return None
    starts = [_since(live, ConditionType.READY, "False"), _since(live, ConditionType.SUSPENDED, "False"),
              _since(live, ConditionType.QUEUED, "False")]
    since = max((start for start in starts if start is not None), default=None)
    if since is None or (parse_rfc3339(now) - since).total_seconds() <= timeout_s:
        return None
    blocker = pod_blocker(pods, live.total_nodes) or f"{live.nodes} pods running"
    return f"not every pod ran within spec.startupTimeoutSeconds ({timeout_s} s): {blocker}"


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


def stalled(status: SFTJobStatus, now: str, stall_timeout_s: int | None,
            startup_timeout_s: int | None = None) -> str | None:
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
    bound = (f"spec.stallTimeoutSeconds: {stall_timeout_s}" if progress.stage is Stage.TRAINING
             else f"before the first step spec.startupTimeoutSeconds bounds it: {limit}"
             if progress.stage is Stage.INITIALIZING
             else f"while saving spec.startupTimeoutSeconds bounds it: {limit}")
    return (f"no training step for {int(idle)} s ({bound}); last fact on the volume at {rfc3339(last)} "
            f"({progress.stage.value}, {at}); restarting every rank from the latest full state")


def _last_training_fact(status: SFTJobStatus) -> datetime | None:
    """What a stall is counted from: the newest fact on the volume, or when every pod ran."""
    progress = status.progress
    running_since = _since(status, ConditionType.READY, "True")
    updated = parse_rfc3339(progress.last_update_time) if progress is not None and progress.last_update_time else None
    facts = [t for t in (running_since, updated) if t]
    return max(facts) if facts else None


# --- backoff between the operator's group restarts -------------------------------------------

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
    """The restart of the ranks a failure left behind (ranks_left_behind), due the backoff after
    the failure ended; ``restarts`` already counts that failure. None when no rank is behind."""
    pods = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    behind = ranks_left_behind(pods)
    failure = last_trainer_termination(pods, failures_only=True)
    if not behind or failure is None:
        return None
    restart = max(restarts, 1)
    delay = restart_backoff_s(restart)
    due = parse_rfc3339(failure.finished_at) + timedelta(seconds=delay)
    return RestartBackoff(reason=RANKS_LEFT_BEHIND, restart=restart, delay_seconds=delay,
                          next_restart_at=rfc3339(due), ranks=behind)


def stall_restart_plan(status: SFTJobStatus, now: str, stall_timeout_s: int | None,
                       startup_timeout_s: int | None = None) -> RestartBackoff | None:
    """The restart of every rank of a stalled job (stalled), due the backoff after the job counted
    as stalled (its last fact + stall_limit_s). None when it is not stalled."""
    last = _last_training_fact(status)
    limit = stall_limit_s(status, stall_timeout_s, startup_timeout_s)
    if limit is None or last is None or stalled(status, now, stall_timeout_s, startup_timeout_s) is None:
        return None
    restart = status.restarts + 1
    delay = restart_backoff_s(restart)
    due = last + timedelta(seconds=limit + delay)
    return RestartBackoff(reason=Reason.STALLED.value, restart=restart, delay_seconds=delay, next_restart_at=rfc3339(due))


def held_back(plan: RestartBackoff | None, now: str) -> bool:
    """Whether the backoff still holds the planned restart back."""
    return plan is not None and parse_rfc3339(now) < parse_rfc3339(plan.next_restart_at)


def describe_backoff(plan: RestartBackoff) -> str:
    what = (f"restarting {', '.join(plan.ranks)} with the failed rank" if plan.reason == RANKS_LEFT_BEHIND
            else "restarting every rank (stalled)")
    return (f"{what} at {plan.next_restart_at}: backoff {plan.delay_seconds} s before restart {plan.restart} "
            f"({RESTART_BACKOFF_INITIAL_S} s doubling to {RESTART_BACKOFF_CAP_S} s)")


def _with_backoff(live: SFTJobStatus, plan: RestartBackoff, now: str, generation: int | None) -> SFTJobStatus:
    """The status with the held-back restart in status.restartBackoff and the Ready message (before
    any "waiting for ...", which names the blocking pod)."""
    ready = _condition(live, ConditionType.READY)
    if ready is None:
        return live.model_copy(update={"restart_backoff": plan})
    head, sep, tail = (ready.message or "").partition("; waiting for ")
    message = f"{head}; {describe_backoff(plan)}{sep}{tail}"
    conditions = set_condition(live.conditions, ConditionType.READY.value, ready.status == "True", ready.reason,
                               message, now, generation)
    return live.model_copy(update={"restart_backoff": plan, "conditions": conditions})


def derive_status(
    current: SFTJobStatus | None,
    *,
    generation: int | None,
    nnodes: int,
    statefulset: dict[str, Any] | None,
    pods: Iterable[dict[str, Any]],
    problem: SpecProblem | None,
    volume: VolumeCheck | None,
    now: str,
    progress: TrainingProgress | None = None,
    max_restarts: int | None = None,
    active_deadline_s: int | None = None,
    startup_timeout_s: int | None = None,
    stall: str | None = None,
    stall_timeout_s: int | None = None,
    export_uri: str | None = None,
) -> SFTJobStatus:
    """The job's status from what exists.

    ``stall``: the operator restarts every rank of a stalled job now (why); it counts as a
    failure. Deadline and start-up timeout are judged against ``now``, and so is the backoff
    that holds back a group restart (status.restartBackoff; ``stall_timeout_s`` for a stall's).

    ``nnodes`` is the spec's; once the StatefulSet exists, the topology it was created with
    wins (a refused change to nnodes does not change what runs). Suspension is read from the
    StatefulSet too: replicas 0 means suspended, whatever the spec says right now.
    ``volume`` None keeps the CheckpointVolume condition as it is (pod events do not re-read the
    claim).
    """
    current = current or SFTJobStatus()
    pods = list(pods)
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
    facts["restarts"] = max([current.restarts, *(entry.failures + facts["stall_restarts"] for entry in ledger),
                             facts["stall_restarts"]])
    conditions = spec_condition(list(current.conditions), problem, now, generation)
    if current.training_over:
        # For good: only the facts move. observedGeneration follows the spec (a later change was
        # seen, and refused or changing nothing); GitOps health checks wait for it.
        return current.model_copy(update={**facts, "conditions": conditions})
    if export_uri is not None:
        exported = exported_condition(facts["progress"])
        if exported is not None:
            conditions = set_condition(conditions, ConditionType.EXPORTED.value, exported[0], exported[1].value,
                                       exported[2], now, generation)
    verdict = training_verdict(facts["progress"], pods if statefulset is not None else [], facts["restarts"],
                               max_restarts, export_uri)
    if verdict is not None:
        phase, reason, message = verdict
        return _finished(current, conditions, facts, phase=phase, reason=reason, message=message, now=now,
                         generation=generation)
    if problem is not None and problem.reason is Reason.INVALID_SPEC and statefulset is None:
        return _invalid_spec(current, conditions, facts, problem, now, generation)
    live = _live(current, conditions, facts, statefulset, pods, volume, now, generation)
    timed_out = deadline_exceeded(live, now, active_deadline_s)
    reason = Reason.DEADLINE_EXCEEDED
    if timed_out is None and problem is None:
        timed_out, reason = startup_timed_out(live, now, startup_timeout_s, pods), Reason.STARTUP_TIMEOUT
    if timed_out is not None:
        return _finished(live, live.conditions, facts, phase=Phase.FAILED, reason=reason, message=timed_out, now=now,
                         generation=generation)
    if stall is None and statefulset is not None and live.phase is not Phase.SUSPENDED:
        plan = group_restart_plan(pods, live.restarts) or stall_restart_plan(live, now, stall_timeout_s, startup_timeout_s)
        if held_back(plan, now):
            assert plan is not None
            return _with_backoff(live, plan, now, generation)
    return live


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
