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
from datetime import datetime, timezone
from typing import Any

from sft_operator import contract
from sft_operator.models import MAPPED_TRAINING_ARGS, AccessMode, Condition, ConditionType, Phase, Reason, SFTJobStatus
from sft_operator.progress import Stage, TrainingProgress
from sft_operator.render import accepted_spec

CHECKPOINT_VOLUME_CONDITION = "CheckpointVolume"


@dataclass(frozen=True)
class SpecProblem:
    """Why the operator refused the current spec (reason: InvalidSpec or ImmutableFieldChanged)."""

    reason: Reason
    message: str


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def running_pods(pods: Iterable[dict[str, Any]], total: int) -> int:
    """Pods of the current topology (ordinal < total) that run and are not being deleted."""
    count = 0
    for pod in pods:
        ordinal = _pod_ordinal(pod)
        if ordinal is None or ordinal >= total:
            continue
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        if (pod.get("status") or {}).get("phase") == "Running":
            count += 1
    return count


def container_restarts(pods: Iterable[dict[str, Any]]) -> int:
    """How often the training restarted: the most restarts of any pod's trainer container.

    Not the sum: when one rank fails, torchrun's rendezvous ends every rank, so one failure of
    a 4-node job restarts 4 containers; counting it 4 times would exhaust maxRestarts at once."""
    most = 0
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if status.get("name") == contract.TRAINER_CONTAINER:
                most = max(most, int(status.get("restartCount") or 0))
    return most


@dataclass(frozen=True)
class VolumeCheck:
    """Whether the checkpoint claim can serve this job (the CheckpointVolume condition)."""

    ok: bool
    reason: str
    message: str


def check_checkpoint_claim(nnodes: int, claim: dict[str, Any] | None, claim_name: str) -> VolumeCheck:
    if claim is None:
        return VolumeCheck(False, "ClaimNotFound", f"PersistentVolumeClaim {claim_name} does not exist; pods wait for it")
    modes = (claim.get("spec") or {}).get("accessModes") or []
    if nnodes > 1 and AccessMode.READ_WRITE_MANY.value not in modes:
        return VolumeCheck(
            False,
            "NotReadWriteMany",
            f"PersistentVolumeClaim {claim_name} is {', '.join(modes) or 'without access modes'}; nnodes > 1 "
            "needs ReadWriteMany: every rank reads full_state/ when it resumes",
        )
    return VolumeCheck(True, "Found", f"PersistentVolumeClaim {claim_name}")


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


def last_trainer_termination(pods: Iterable[dict[str, Any]]) -> Termination | None:
    """The newest termination of a trainer container across the pods (current or last state)."""
    latest: Termination | None = None
    for pod in pods:
        name = (pod.get("metadata") or {}).get("name", "")
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if status.get("name") != contract.TRAINER_CONTAINER:
                continue
            for state in (status.get("state"), status.get("lastState")):
                terminated = (state or {}).get("terminated")
                if not terminated:
                    continue
                candidate = Termination(
                    pod=name,
                    exit_code=int(terminated.get("exitCode") or 0),
                    reason=terminated.get("reason") or "",
                    message=terminated.get("message") or "",
                    finished_at=terminated.get("finishedAt") or "",
                )
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


def _finished(
    current: SFTJobStatus,
    conditions: list[Condition],
    *,
    phase: Phase,
    reason: Reason,
    message: str,
    now: str,
    generation: int | None,
    nnodes: int,
    ready: int,
    restarts: int,
    progress: TrainingProgress | None,
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
        update={
            "phase": phase,
            "conditions": conditions,
            "observed_generation": generation,
            "ready_nodes": ready,
            "total_nodes": nnodes,
            "nodes": f"{ready}/{nnodes}",
            "completion_time": current.completion_time or now,
            "restarts": restarts,
            "progress": progress,
        }
    )


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
) -> SFTJobStatus:
    """The job's status from what exists.

    ``nnodes`` is the spec's; once the StatefulSet exists, the topology it was created with
    wins (a refused change to nnodes does not change what runs). Suspension is read from the
    StatefulSet too: replicas 0 means suspended, whatever the spec says right now.
    ``volume`` None keeps the CheckpointVolume condition as it is (pod events do not re-read the
    claim).
    """
    current = current or SFTJobStatus()
    conditions = list(current.conditions)
    pods = list(pods)
    progress = progress if progress is not None else current.progress
    restarts = max(current.restarts, container_restarts(pods))  # pod restartCounts reset with the pod

    if statefulset is not None:
        accepted = accepted_spec(statefulset) or {}
        nnodes = int(accepted.get("nnodes") or nnodes)
    ready = running_pods(pods, nnodes) if statefulset is not None else 0
    if current.training_over:  # for good: only the facts (progress, pods) still move
        # observedGeneration follows the spec: a later spec change was seen (and changes nothing);
        # GitOps health checks wait for observedGeneration == generation.
        return current.model_copy(
            update={"progress": progress, "ready_nodes": ready, "nodes": f"{ready}/{nnodes}", "restarts": restarts,
                    "observed_generation": generation}
        )
    finished = dict(now=now, generation=generation, nnodes=nnodes, ready=ready, restarts=restarts, progress=progress)
    if progress is not None and progress.stage is Stage.COMPLETED:
        message = f"trained {progress.num_epochs} epochs"
        if progress.latest_checkpoint:
            message += f"; final checkpoint hf_format/{progress.latest_checkpoint}"
        return _finished(current, conditions, phase=Phase.SUCCEEDED, reason=Reason.TRAINING_COMPLETED,
                         message=message, **finished)
    termination = last_trainer_termination(pods) if statefulset is not None else None
    if termination is not None and termination.exit_code == contract.EXIT_BAD_CONFIG:
        return _finished(current, conditions, phase=Phase.FAILED, reason=Reason.CONFIG_REJECTED,
                         message="the launcher rejected its configuration, a retry cannot help: "
                         + name_spec_fields(termination.describe()), **finished)
    if max_restarts is not None and restarts > max_restarts:
        last = termination.describe() if termination is not None else "no termination recorded"
        return _finished(current, conditions, phase=Phase.FAILED, reason=Reason.TOO_MANY_RESTARTS,
                         message=f"the trainer restarted {restarts} times (spec.maxRestarts: {max_restarts}); last: {last}",
                         **finished)
    if problem is not None and problem.reason is Reason.INVALID_SPEC and statefulset is None:
        conditions = set_condition(
            conditions, ConditionType.SPEC_VALID.value, False, problem.reason.value, problem.message, now, generation
        )
        conditions = set_condition(
            conditions, ConditionType.FAILED.value, True, problem.reason.value, problem.message, now, generation
        )
        conditions = set_condition(
            conditions, ConditionType.READY.value, False, problem.reason.value, "no pods: the spec is invalid", now,
            generation,
        )
        return current.model_copy(
            update={
                "phase": Phase.FAILED,
                "conditions": conditions,
                "observed_generation": generation,
                "ready_nodes": 0,
                "total_nodes": nnodes,
                "nodes": f"0/{nnodes}",
            }
        )

    if problem is None:
        conditions = set_condition(
            conditions, ConditionType.SPEC_VALID.value, True, Reason.VALID.value, "", now, generation
        )
    else:
        conditions = set_condition(
            conditions, ConditionType.SPEC_VALID.value, False, problem.reason.value, problem.message, now, generation
        )
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
    if phase is Phase.RUNNING:
        ready_reason, ready_message = Reason.ALL_NODES_RUNNING.value, f"{ready}/{nnodes} pods running"
    elif suspended:
        ready_reason, ready_message = Reason.SUSPENDED.value, "suspended"
    else:
        ready_reason, ready_message = Reason.NODES_PENDING.value, f"{ready}/{nnodes} pods running"
    conditions = set_condition(
        conditions, ConditionType.READY.value, phase is Phase.RUNNING, ready_reason, ready_message, now, generation
    )
    if volume is not None:
        conditions = set_condition(
            conditions, CHECKPOINT_VOLUME_CONDITION, volume.ok, volume.reason, volume.message, now, generation
        )
    start_time = current.start_time
    if phase is Phase.RUNNING and start_time is None:
        start_time = now
    return current.model_copy(
        update={
            "phase": phase,
            "conditions": conditions,
            "observed_generation": generation,
            "ready_nodes": ready,
            "total_nodes": nnodes,
            "nodes": f"{ready}/{nnodes}",
            "start_time": start_time,
            "restarts": restarts,
            "progress": progress,
        }
    )
