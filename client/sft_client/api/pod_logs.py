"""A training pod's log: pod ``<job>-<node>``, container ``trainer`` (thin I/O over the API).

The API server reads it from the pod's kubelet (``kubectl logs``); streamed, never held whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sft_client.api.jobs import get_job
from sft_client.api.results import view_job
from sft_core import contract

READ_CHUNK_BYTES = 64 * 1024


class LogsUnavailableError(LookupError):
    """The log cannot be read: no such node, the pod is gone or not started yet."""


def pod_name(job_name: str, node: int) -> str:
    """Node rank ``node`` runs in the StatefulSet's pod ``<job>-<node>`` (render.py, contract)."""
    return f"{job_name}-{node}"


def lines_of(chunks: Iterator[bytes]) -> Iterator[str]:
    """Text lines (without their newline) from byte chunks cut anywhere."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.decode("utf-8", errors="replace")
    if pending:
        yield pending.decode("utf-8", errors="replace")


def _explain_missing_pod(api_client: Any, name: str, namespace: str, node: int) -> str:
    job = get_job(api_client, name, namespace)  # SFTJobNotFoundError if the job is gone too
    nnodes = (job.get("spec") or {}).get("nnodes", 1)
    pod = pod_name(name, node)
    if not 0 <= node < nnodes:
        return f"SFTJob {namespace}/{name} has nodes 0..{nnodes - 1}; there is no node {node}"
    view = view_job(job)
    return f"pod {namespace}/{pod} does not exist (SFTJob {name} is {view.phase}; its pods run only while it trains)"


def stream_logs(
    api_client: Any,
    name: str,
    namespace: str,
    *,
    node: int = 0,
    follow: bool = False,
    tail_lines: int | None = None,
    previous: bool = False,
) -> Iterator[str]:
    """The lines of node ``node``'s trainer log. ``follow``: keep streaming until the container
    stops; ``previous``: the log of the container's previous run (before its last restart).
    The request is made at once: LogsUnavailableError (no such node or pod, container not
    started) is raised here, not while iterating."""
    import kubernetes.client
    from kubernetes.client.exceptions import ApiException

    pod = pod_name(name, node)
    core = kubernetes.client.CoreV1Api(api_client)
    try:
        response = core.read_namespaced_pod_log(
            pod,
            namespace,
            container=contract.TRAINER_CONTAINER,
            follow=follow,
            tail_lines=tail_lines,
            previous=previous,
            _preload_content=False,
        )
    except ApiException as exc:
        if exc.status == 404:
            raise LogsUnavailableError(_explain_missing_pod(api_client, name, namespace, node)) from None
        if exc.status == 400:  # the API server's reason, e.g. 'container "trainer" ... is waiting to start'
            raise LogsUnavailableError(f"pod {namespace}/{pod}: {_api_message(exc)}") from None
        raise
    return _lines_then_release(response)


def _lines_then_release(response: Any) -> Iterator[str]:
    try:
        yield from lines_of(response.stream(READ_CHUNK_BYTES, decode_content=True))
    finally:
        response.release_conn()


def _api_message(exc: Any) -> str:
    import json

    try:
        message: str = json.loads(exc.body)["message"]
        return message
    except (TypeError, ValueError, KeyError):
        return str(exc.reason)
