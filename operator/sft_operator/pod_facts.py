"""Facts read from a job's pods: which run, how their trainers ended (the per-node restart
ledger), which ranks a failure left behind, and what keeps a pod from running.

Pure: functions of the pod dicts as the API returns them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sft_core import contract
from sft_models.models import NodeRestarts


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


def last_trainer_termination(
    pods: Iterable[dict[str, Any]], failures_only: bool = False, container: str = contract.TRAINER_CONTAINER
) -> Termination | None:
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
            if failures_only and (
                candidate.exit_code == contract.EXIT_OK or is_preemption(candidate.exit_code, deleted)
            ):
                continue
            if latest is None or candidate.finished_at > latest.finished_at:
                latest = candidate
    return latest


def rendezvous_conflict(pods: list[dict[str, Any]]) -> Termination | None:
    """The trainer's newest termination when it is a rendezvous conflict (exit 5) and the
    trainer has not run since: why a job that retries waits."""
    newest = last_trainer_termination(pods)
    if newest is None or newest.exit_code != contract.EXIT_RENDEZVOUS_CONFLICT:
        return None
    pod = next((p for p in pods if (p.get("metadata") or {}).get("name") == newest.pod), None)
    return newest if pod is not None and _trainer_down(pod) else None


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
            if (
                status.get("name") == contract.TRAINER_CONTAINER
                and name != failure.pod
                and started
                and started < failure.finished_at
            ):
                behind.append(name)
    return sorted(behind)


@dataclass(frozen=True)
class Blocker:
    """Why a pod of the job does not run, in the kubelet's or the scheduler's words: ``reason``
    is a container's waiting reason or the pod's PodScheduled=False reason, ``detail`` the
    message that came with it (may be empty)."""

    pod: str
    reason: str
    detail: str

    @property
    def cause(self) -> str:
        """What the blocker Event is said once for: the pod and its reason, not the detail
        (the scheduler's count of free nodes changes while the cause stays)."""
        return f"pod {self.pod}: {self.reason}"

    def describe(self) -> str:
        return f"{self.cause}: {self.detail}" if self.detail else self.cause


def pod_blocker(pods: Iterable[dict[str, Any]], nnodes: int) -> Blocker | None:
    """Why the first pod that does not run waits: a container's waiting reason
    (ImagePullBackOff, CreateContainerConfigError, ...), else the pod's PodScheduled=False
    reason (Unschedulable: 0/12 nodes are available: ...)."""
    for pod in sorted(pods, key=lambda p: _ordinal_or(p, nnodes)):
        ordinal = _pod_ordinal(pod)
        if ordinal is None or ordinal >= nnodes or (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        name = (pod.get("metadata") or {}).get("name", "")
        status = pod.get("status") or {}
        for container in status.get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting")
            if waiting and waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
                return Blocker(name, waiting["reason"], waiting.get("message") or "")
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                return Blocker(name, condition.get("reason") or "Unschedulable", condition.get("message") or "")
    return None


def gated_pod(pods: Iterable[dict[str, Any]], nnodes: int) -> str | None:
    """The first pod of the job a scheduling gate holds back (Kueue gates the pods of a queued
    workload until it admits them all), in the scheduler's words, or None."""
    for pod in sorted(pods, key=lambda p: _ordinal_or(p, nnodes)):
        ordinal = _pod_ordinal(pod)
        if ordinal is None or ordinal >= nnodes or (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        for condition in (pod.get("status") or {}).get("conditions") or []:
            if (condition.get("type"), condition.get("status"), condition.get("reason")) == (
                "PodScheduled",
                "False",
                "SchedulingGated",
            ):
                text = f"pod {(pod.get('metadata') or {}).get('name', '')}: SchedulingGated"
                return f"{text}: {condition['message']}" if condition.get("message") else text
    return None
