"""A job's Events, oldest first: the SFTJob's own (the operator's), its pods', and those of the
StatefulSet and checkpoint claim that explain pods that never start (FailedCreate,
ProvisioningFailed). Pure selection and ordering; ``job_events`` does the listing."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sft_client.api.jobs import get_job
from sft_core import contract
from sft_models.models import InvalidSpecError, parse_job
from sft_models.naming import claim_name


@dataclass(frozen=True)
class JobEvent:
    time: str  # RFC 3339, seconds
    type: str  # Normal or Warning
    reason: str
    object: str  # kind/name, e.g. Pod/tiny-0
    message: str
    count: int = 1


def event_time(event: dict[str, Any]) -> datetime:
    """When it last happened: lastTimestamp (core/v1 Events), else eventTime (events.k8s.io-style
    writers), else when the object was created."""
    metadata = event.get("metadata") or {}
    for text in (
        event.get("lastTimestamp"),
        event.get("eventTime"),
        event.get("firstTimestamp"),
        metadata.get("creationTimestamp"),
    ):
        if text:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    return datetime.min.replace(tzinfo=UTC)


def to_job_event(event: dict[str, Any]) -> JobEvent:
    involved = event.get("involvedObject") or {}
    return JobEvent(
        time=event_time(event).strftime("%Y-%m-%dT%H:%M:%SZ"),
        type=event.get("type") or "",
        reason=event.get("reason") or "",
        object=f"{involved.get('kind', '')}/{involved.get('name', '')}",
        message=(event.get("message") or "").strip(),
        count=event.get("count") or 1,
    )


def is_pod_of(job_name: str, pod_name: str) -> bool:
    """Pod ``<job>-<ordinal>`` (not ``<job>-x-0``: that is job ``<job>-x``'s)."""
    return re.fullmatch(re.escape(job_name) + r"-\d+", pod_name) is not None


def oldest_first(events: list[dict[str, Any]]) -> list[JobEvent]:
    """Oldest first; events of equal time in the order the API listed them."""
    return [to_job_event(e) for e in sorted(events, key=event_time)]


def job_events(api_client: Any, name: str, namespace: str) -> list[JobEvent]:
    """Raises SFTJobNotFoundError when the job does not exist."""
    import kubernetes.client

    job = get_job(api_client, name, namespace)
    core = kubernetes.client.CoreV1Api(api_client)
    plain = api_client.sanitize_for_serialization

    def events_about(kind: str, object_name: str | None = None) -> list[dict[str, Any]]:
        selector = f"involvedObject.kind={kind}" + (f",involvedObject.name={object_name}" if object_name else "")
        return [plain(e) for e in core.list_namespaced_event(namespace, field_selector=selector).items]

    found = events_about(contract.KIND, name) + events_about("StatefulSet", name)
    found += [e for e in events_about("Pod") if is_pod_of(name, e["involvedObject"]["name"])]
    try:
        found += events_about("PersistentVolumeClaim", claim_name(parse_job(job)))
    except InvalidSpecError:
        pass  # a refused spec: the operator created no claim
    return oldest_first(found)
