"""SFTJobs on the cluster: connect, create, read, list and follow (thin I/O over the API)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sft_client.api.display import ProgressDisplay
from sft_client.api.results import (
    JobView,
    SFTJobDeletedError,
    SFTJobFailedError,
    SFTJobResult,
    failure_of,
    parse_status,
    result_of,
    view_job,
)
from sft_core import contract
from sft_models.models import Phase

DEFAULT_NAMESPACE = "default"
SERVICE_ACCOUNT_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# One watch request lasts at most this long; then we re-read and watch again.
WATCH_REQUEST_SECONDS = 60


class SFTJobNotFoundError(LookupError):
    pass


def connect(kubeconfig: str | os.PathLike[str] | None = None, context: str | None = None) -> tuple[Any, str]:
    """(ApiClient, the namespace to use by default): the kubeconfig (``$KUBECONFIG``,
    ``~/.kube/config``) and its context's namespace; in a pod without a kubeconfig, the
    pod's service account and namespace."""
    from kubernetes import config

    default_file = Path(os.path.expanduser(config.KUBE_CONFIG_DEFAULT_LOCATION))
    in_pod = os.environ.get("KUBERNETES_SERVICE_HOST") and SERVICE_ACCOUNT_NAMESPACE_FILE.exists()
    if (
        kubeconfig is None
        and context is None
        and in_pod
        and not os.environ.get("KUBECONFIG")
        and not default_file.exists()
    ):
        import kubernetes.client

        config.load_incluster_config()
        return kubernetes.client.ApiClient(), SERVICE_ACCOUNT_NAMESPACE_FILE.read_text().strip() or DEFAULT_NAMESPACE
    config_file = str(kubeconfig) if kubeconfig is not None else None
    client = config.new_client_from_config(config_file=config_file, context=context)
    contexts, active = config.list_kube_config_contexts(config_file=config_file)
    chosen = next((c for c in contexts if c.get("name") == context), active) if context else active
    namespace = ((chosen or {}).get("context") or {}).get("namespace") or DEFAULT_NAMESPACE
    return client, namespace


def custom_objects_api(api_client: Any) -> Any:
    import kubernetes.client

    return kubernetes.client.CustomObjectsApi(api_client)


class SFTJobRefusedError(PermissionError):
    """The API server refused to create the job: its schema, RBAC, or the operator's admission
    webhook (a user who may not create pods, the cluster's policy); the message is the server's."""


# Refusals a retry cannot change: invalid (400, 422), forbidden (403), already there (409).
REFUSED_STATUSES = frozenset({400, 403, 409, 422})


def create_job(api_client: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    """Create the SFTJob; raises SFTJobRefusedError with the server's reason when it is refused."""
    from kubernetes.client.exceptions import ApiException

    namespace = manifest["metadata"]["namespace"]
    try:
        created: dict[str, Any] = custom_objects_api(api_client).create_namespaced_custom_object(
            contract.GROUP, contract.VERSION, namespace, contract.PLURAL, manifest
        )
        return created
    except ApiException as exc:
        if exc.status not in REFUSED_STATUSES:
            raise
        raise SFTJobRefusedError(
            f"SFTJob {namespace}/{manifest['metadata'].get('name')} was not created: {refusal_message(exc)}"
        ) from None


def refusal_message(exc: Any) -> str:
    """The API server's message of a refusal (a Status body), else its HTTP reason."""
    try:
        message = json.loads(exc.body or "").get("message")
    except (ValueError, AttributeError):
        message = None
    return message or f"{exc.status} {exc.reason}"


def get_job(api_client: Any, name: str, namespace: str) -> dict[str, Any]:
    from kubernetes.client.exceptions import ApiException

    try:
        job: dict[str, Any] = custom_objects_api(api_client).get_namespaced_custom_object(
            contract.GROUP, contract.VERSION, namespace, contract.PLURAL, name
        )
        return job
    except ApiException as exc:
        if exc.status == 404:
            raise SFTJobNotFoundError(f"SFTJob {namespace}/{name} not found") from None
        raise


def list_jobs(api_client: Any, namespace: str | None) -> list[dict[str, Any]]:
    """The SFTJobs of ``namespace`` (None: all namespaces), oldest first."""
    custom = custom_objects_api(api_client)
    if namespace is None:
        body = custom.list_cluster_custom_object(contract.GROUP, contract.VERSION, contract.PLURAL)
    else:
        body = custom.list_namespaced_custom_object(contract.GROUP, contract.VERSION, namespace, contract.PLURAL)
    items = body.get("items") or []
    return sorted(items, key=lambda j: (j["metadata"].get("creationTimestamp") or "", j["metadata"]["name"]))


def follow_job(
    api_client: Any,
    name: str,
    namespace: str,
    on_change: Callable[[dict[str, Any]], Any],
    timeout: float | None = None,
    until: Callable[[JobView], bool] = lambda view: view.finished,
) -> dict[str, Any]:
    """Call ``on_change`` with the job now and with every new version, until ``until`` says so
    (default: it is Succeeded or Failed); return that last version. A watch, not polling: one request per
    WATCH_REQUEST_SECONDS when nothing happens. Raises TimeoutError (the job keeps running),
    SFTJobDeletedError, SFTJobNotFoundError."""
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    deadline = None if timeout is None else time.monotonic() + timeout
    custom = custom_objects_api(api_client)
    job = get_job(api_client, name, namespace)
    on_change(job)
    while not until(view_job(job)):
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise TimeoutError(
                f"SFTJob {namespace}/{name} is still {view_job(job).phase} after {timeout:g}s; it keeps running"
            )
        request_seconds = (
            WATCH_REQUEST_SECONDS if remaining is None else max(1, min(WATCH_REQUEST_SECONDS, int(remaining) + 1))
        )
        watcher = watch.Watch()
        try:
            for event in watcher.stream(
                custom.list_namespaced_custom_object,
                contract.GROUP,
                contract.VERSION,
                namespace,
                contract.PLURAL,
                field_selector=f"metadata.name={name}",
                resource_version=job["metadata"]["resourceVersion"],
                timeout_seconds=request_seconds,
            ):
                kind = event["type"]
                obj: dict[str, Any] = event["object"]
                if kind == "ERROR":  # e.g. 410 Gone: our resourceVersion is too old
                    break
                if kind == "DELETED":
                    raise SFTJobDeletedError(f"SFTJob {namespace}/{name} was deleted while waiting for it")
                job = obj
                on_change(job)
                if until(view_job(job)):
                    return job
                if deadline is not None and time.monotonic() >= deadline:
                    break
        except ApiException as exc:
            if exc.status != 410:
                raise
        finally:
            watcher.stop()
        # The watch ended (its timeout, or history expired): read the current version and go on.
        job = get_job(api_client, name, namespace)
        on_change(job)
    return job


def wait_for_job(
    api_client: Any,
    name: str,
    namespace: str,
    *,
    timeout: float | None = None,
    display: ProgressDisplay | None = None,
    manifest: dict[str, Any] | None = None,
    until: Callable[[JobView], bool] = lambda view: view.finished,
) -> SFTJobResult:
    """Follow the job with a progress display until ``until`` (default: its end); return its
    result, or raise SFTJobFailedError with the job's reason and message. Ctrl-C stops waiting,
    not the job."""
    display = display if display is not None else ProgressDisplay()
    with display:
        try:
            job = follow_job(api_client, name, namespace, display.update, timeout=timeout, until=until)
        except KeyboardInterrupt:
            display.note(
                f"Stopped waiting; SFTJob {namespace}/{name} keeps running. "
                f"Follow it again with: sft-operator wait {name} -n {namespace}"
            )
            raise
    result = result_of(job, manifest, api_client)
    if result.phase == Phase.FAILED.value:
        reason, message = failure_of(parse_status(job.get("status")))
        raise SFTJobFailedError(result, reason, message)
    return result
