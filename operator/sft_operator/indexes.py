"""What kopf's indexes keep per job (handlers.py registers each projection on its resource and
labels), and ``Indexes``, the handlers' view of a job and its children through them.

Each projection keeps of an object only what the status and a resume read: kopf holds every
job's and every child's entry in memory for the operator's life.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import kopf

from sft_core import contract
from sft_core.progress import TrainingProgress, parse_progress_summary
from sft_core.untrusted import DroppedValue
from sft_operator import owner_refs
from sft_operator.children import KnownChildren, child_summary
from sft_operator.kopf_storage import LAST_APPLIED
from sft_operator.publishing import Key


def jobs_by_name(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """Each job as the handlers read it: spec, status and metadata, less what nothing reads
    (managedFields, and two copies of the spec: kubectl's last-applied annotation, kopf's own
    annotations under our group's prefix)."""
    meta = {k: v for k, v in body["metadata"].items() if k not in ("managedFields", "annotations")}
    annotations = {
        k: v
        for k, v in (body["metadata"].get("annotations") or {}).items()
        if k != LAST_APPLIED and not k.startswith(f"{contract.GROUP}/")
    }
    if annotations:
        meta["annotations"] = annotations
    slim = {k: v for k, v in body.items() if k != "metadata"}
    slim["metadata"] = meta
    return {(namespace, name): copy.deepcopy(slim)}


def pods_by_job(
    namespace: str | None, name: str, labels: kopf.Labels, meta: kopf.Meta, status: kopf.Status, **_: Any
) -> dict[Any, Any]:
    restarts = [
        {
            "name": c.get("name"),
            "restartCount": c.get("restartCount", 0),
            # How the container last ended (why a job Failed), and whether it waits to restart now
            # (a crash-looping trainer in a Running pod): only the few fields status reads.
            "state": _state_summary(c.get("state")),
            "lastState": _state_summary(c.get("lastState")),
        }
        for c in status.get("containerStatuses") or []
    ]
    # Why a pod is not scheduled (the scheduler's words), for a pending job's status.
    unscheduled = [
        {k: c.get(k) for k in ("type", "status", "reason", "message")}
        for c in status.get("conditions") or []
        if c.get("type") == "PodScheduled" and c.get("status") == "False"
    ]
    return {
        (namespace, labels[contract.LABEL_JOB_NAME]): {
            # controller: whose pod it is (Indexes.pods keeps the job's StatefulSet's only).
            "metadata": {
                "name": name,
                "deletionTimestamp": meta.get("deletionTimestamp"),
                "controller": owner_refs.controller_uid(meta),
            },
            "status": {"phase": status.get("phase"), "containerStatuses": restarts, "conditions": unscheduled},
        }
    }


def _state_summary(state: Any) -> dict[str, Any]:
    state = state or {}
    if state.get("waiting"):
        waiting = state["waiting"]
        return {"waiting": {"reason": waiting.get("reason"), "message": (waiting.get("message") or "")[-512:]}}
    if state.get("running"):  # since when: which ranks a failure elsewhere left behind
        return {"running": {"startedAt": state["running"].get("startedAt")}}
    terminated = state.get("terminated")
    if not terminated:
        return {}
    keep = ("exitCode", "reason", "finishedAt")
    return {
        "terminated": {**{k: terminated.get(k) for k in keep}, "message": (terminated.get("message") or "")[-1024:]}
    }


def progress_by_job(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """The reporter's latest summary per job, checked value by value against the status schema
    (the job's own pods write it): progress None until it published one, or if unusable;
    dropped, what the check left out (a Warning each, publishing.warn_dropped_progress)."""
    raw = (body.get("data") or {}).get(contract.PROGRESS_KEY)
    checked = parse_progress_summary(raw) if raw else None
    return {
        (namespace, labels[contract.LABEL_JOB_NAME]): {
            "name": body["metadata"]["name"],
            "controller": owner_refs.controller_uid(body["metadata"]),
            "progress": checked.value.to_api() if checked is not None and checked.value is not None else None,
            "dropped": checked.dropped if checked is not None else (),
        }
    }


def statefulsets_by_job(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """Each job's StatefulSet: what the status reads (replicas, the accepted spec) and what a
    resume compares (ownership, the desired hash)."""
    return {(namespace, labels[contract.LABEL_JOB_NAME]): child_summary(body)}


# The kinds of children a resume finds in the indexes (statefulsets_by_job, children_by_job); the
# others it lists (kube.LISTED_KINDS).
WATCHED_KINDS = frozenset({"StatefulSet", "ConfigMap"})


def children_by_job(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """Each job's ConfigMaps, as a resume compares them: an operator restart finds them here
    instead of reading each (kopf fills every index before any handler runs)."""
    return {(namespace, labels[contract.LABEL_JOB_NAME]): child_summary(body)}


def index_entry(index: kopf.Index[Any, Any], key: Key) -> Any:
    """A job's one entry in an index (each index keeps one value per job), or None."""
    store = index.get(key)
    return next(iter(store), None) if store else None


@dataclass(frozen=True)
class Indexes:
    """The operator's view of every job and its children, kept by kopf from the watches."""

    jobs_by_name: kopf.Index[Any, Any]
    pods_by_job: kopf.Index[Any, Any]
    statefulsets_by_job: kopf.Index[Any, Any]
    progress_by_job: kopf.Index[Any, Any]
    children_by_job: kopf.Index[Any, Any]

    @classmethod
    def of(cls, kwargs: dict[str, Any]) -> Indexes:
        """kopf hands every handler every index, by name."""
        return cls(**{name: kwargs[name] for name in cls.__dataclass_fields__})

    # The indexes are keyed by the job-name label, which anyone may set: what is the job's is
    # told by owner reference (owner_refs), so a foreign pod labelled like the job's pod 0 can
    # neither fail the job nor be deleted by a group restart.

    def job_uid(self, key: Key) -> str | None:
        job = index_entry(self.jobs_by_name, key)
        return job["metadata"].get("uid") if job is not None else None

    def statefulset(self, key: Key) -> dict[str, Any] | None:
        """The job's StatefulSet: named as the job and controlled by it."""
        return owner_refs.jobs_statefulset(self.statefulsets_by_job.get(key, []), key[1], self.job_uid(key))

    def pods(self, key: Key) -> list[dict[str, Any]]:
        """The pods the job's StatefulSet controls."""
        return owner_refs.statefulsets_pods(self.pods_by_job.get(key, []), self.statefulset(key))

    def children(self, key: Key) -> KnownChildren:
        """The job's children of the watched kinds, as the watches show them now, by name (the
        names the job's children take: converge compares their owners, and adopts or refuses)."""
        objects = {(child["kind"], child["metadata"]["name"]): child for child in self.children_by_job.get(key, [])}
        for statefulset in self.statefulsets_by_job.get(key, []):
            if statefulset["metadata"]["name"] == key[1]:
                objects[("StatefulSet", key[1])] = statefulset
        return KnownChildren(WATCHED_KINDS, objects)

    def progress(self, key: Key) -> TrainingProgress | None:
        """The summary in the job's own progress ConfigMap, as checked (progress_by_job)."""
        entry = owner_refs.jobs_progress(self.progress_by_job.get(key, []), key[1], self.job_uid(key))
        return TrainingProgress.model_validate(entry["progress"]) if entry and entry["progress"] else None

    def progress_dropped(self, key: Key) -> tuple[DroppedValue, ...]:
        """What the check of that summary left out."""
        entry = owner_refs.jobs_progress(self.progress_by_job.get(key, []), key[1], self.job_uid(key))
        return tuple(entry["dropped"]) if entry else ()
