"""Which of the objects carrying a job's labels are the job's: by owner reference, not by label.

Labels are anyone's to set: any workload of the namespace may label a pod or a ConfigMap like a
job's (a crashed pod, a summary saying Completed) and so forge a failure or a success, or have
the operator delete its pod in a group restart. What counts is the ownership chain the API
server keeps: the job controls its StatefulSet and its progress ConfigMap (our owner reference,
with the job's uid), the StatefulSet controls its pods (the StatefulSet controller's, with the
StatefulSet's uid). Pure: index entries in, the job's own out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sft_core import contract


def controller_uid(meta: Mapping[str, Any]) -> str | None:
    """The uid of the object's controller (the owner reference with controller: true), or None."""
    for owner in meta.get("ownerReferences") or []:
        if owner.get("controller"):
            uid: str | None = owner.get("uid")
            return uid
    return None


def jobs_statefulset(entries: Iterable[dict[str, Any]], job_name: str, job_uid: str | None) -> dict[str, Any] | None:
    """The job's StatefulSet among the StatefulSets labelled as the job's: named as the job and
    controlled by it (child summaries: metadata with name, uid and ownerReferences)."""
    if not job_uid:
        return None
    return next(
        (
            entry
            for entry in entries
            if entry["metadata"].get("name") == job_name and controller_uid(entry["metadata"]) == job_uid
        ),
        None,
    )


def statefulsets_pods(entries: Iterable[dict[str, Any]], statefulset: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The pods the StatefulSet controls, among the pods labelled as the job's (entries whose
    metadata has ``controller``: their controller's uid)."""
    uid = (statefulset or {}).get("metadata", {}).get("uid")
    if not uid:
        return []
    return [entry for entry in entries if entry["metadata"].get("controller") == uid]


def jobs_progress(entries: Iterable[dict[str, Any]], job_name: str, job_uid: str | None) -> dict[str, Any] | None:
    """The job's progress ConfigMap entry among those labelled as its progress: named
    ``<job>-progress`` and controlled by the job (entries with ``name`` and ``controller``)."""
    if not job_uid:
        return None
    name = contract.progress_configmap_name(job_name)
    return next((entry for entry in entries if entry.get("name") == name and entry.get("controller") == job_uid), None)
