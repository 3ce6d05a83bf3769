"""The operator's API adapter: ``KubeApi``, the calls converge (children.py), publishing and the
handlers make, and ``Kube``, those calls over the kubernetes client.

Everything above this module sees plain dicts (manifests as rendered, objects as the API server
returns them) and ``ApiException`` for any answer but the ones named here; the policies that
decide what to call are typed against the Protocol, so a test hands them an in-memory fake.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Protocol, cast

import kubernetes
from kubernetes.client.exceptions import ApiException

from sft_core import contract
from sft_core.events import fit_message
from sft_operator import render_meta

log = logging.getLogger("sft_operator")


class KubeApi(Protocol):
    """What the operator asks of the API server. Objects are plain dicts; a write's refusal is
    the ``ApiException`` the API server answered (the callers tell 409, 422, ... apart)."""

    def read(self, kind: str, namespace: str, name: str, api_version: str | None = None) -> dict[str, Any] | None:
        """A child by kind (``api_version`` only for a kind of another API group: a PodGroup);
        None when it does not exist."""
        ...

    def read_claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A checkpoint claim the job did not create (spec.checkpoints.existingClaim), perhaps
        as read a few seconds ago."""
        ...

    def listed(self, kind: str, namespace: str) -> dict[str, dict[str, Any]]:
        """Our children of one of LISTED_KINDS in a namespace, by name, perhaps as listed a few
        seconds ago."""
        ...

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]: ...

    def replace(self, manifest: dict[str, Any]) -> dict[str, Any]: ...

    def read_job(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def delete_pod(self, namespace: str, name: str, grace_period_seconds: int) -> None:
        """Gone already is fine."""
        ...

    def delete_job(self, namespace: str, name: str, uid: str) -> None:
        """The SFTJob with this uid only; gone already is fine."""
        ...

    def post_event(self, job: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """An Event about the SFTJob; one that cannot be posted is logged, never raised."""
        ...

    def patch_job_status(self, namespace: str, name: str, status: dict[str, Any]) -> None: ...


# An existing checkpoint claim (spec.checkpoints.existingClaim) found by a read is trusted this
# long: a sweep of jobs sharing one claim reads it once, not once per job. A missing claim is
# always read again (it may be created any moment).
CLAIM_CACHE_S = 5.0
# The children kinds a resume does not find in kopf's indexes, listed (one request per namespace
# and kind) instead of read one by one per job. A listing is reused this long: a restart's burst
# of resumes takes one or a few per kind. Its only staleness risk is one of these children
# deleted in that window: it is not re-created until the job's spec changes or the operator
# restarts (a deleted Service or NetworkPolicy: until the watch's deletion event, which re-creates
# it anyway). Services and NetworkPolicies are watched (for deletions) but not indexed: at
# start-up kopf holds every handler until each object of an indexed resource is indexed, through
# one toggle per object that every waiting worker re-checks on each change (quadratic in the
# objects: a restart over 1000 jobs spent minutes there), so an index of them would cost more
# than their one listing.
LISTED_KINDS = ("ServiceAccount", "Role", "RoleBinding", "PersistentVolumeClaim", "Service", "NetworkPolicy")
LISTING_TTL_S = 10.0
OUR_CHILDREN_SELECTOR = f"{contract.LABEL_MANAGED_BY}={contract.MANAGED_BY}"


class Kube(KubeApi):
    """KubeApi over the kubernetes client: by kind, reads return dicts, 404 is None."""

    def __init__(self, api_client: kubernetes.client.ApiClient):
        self.client = api_client
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.apps = kubernetes.client.AppsV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.rbac = kubernetes.client.RbacAuthorizationV1Api(api_client)
        self.networking = kubernetes.client.NetworkingV1Api(api_client)
        self._claims: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self._claims_lock = threading.Lock()
        self._listings: dict[tuple[str, str], tuple[float, dict[str, dict[str, Any]]]] = {}
        self._listing_locks: dict[tuple[str, str], threading.Lock] = {}
        self._listings_lock = threading.Lock()

    def _read_call(self, kind: str) -> Callable[..., Any]:
        return {
            "StatefulSet": self.apps.read_namespaced_stateful_set,
            "Service": self.core.read_namespaced_service,
            "ConfigMap": self.core.read_namespaced_config_map,
            "PersistentVolumeClaim": self.core.read_namespaced_persistent_volume_claim,
            "ServiceAccount": self.core.read_namespaced_service_account,
            "Role": self.rbac.read_namespaced_role,
            "RoleBinding": self.rbac.read_namespaced_role_binding,
            "NetworkPolicy": self.networking.read_namespaced_network_policy,
        }[kind]

    def _write(self, method: str, manifest: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        """POST (create) or PUT (replace, ``name``) a namespaced manifest as the JSON it is. The
        client's generated methods first build their typed model of a body and serialize that
        back to the same JSON: 8 % of the operator's CPU in a 200-job profile, mostly for the
        StatefulSet. A refusal comes from the API server (400, 422), as the client's own checks
        used to (the API server checks the same and more)."""
        group_version, meta = manifest["apiVersion"], manifest["metadata"]
        root = f"/apis/{group_version}" if "/" in group_version else f"/api/{group_version}"
        path = f"{root}/namespaces/{meta['namespace']}/{render_meta.resource_plural(manifest['kind'])}" + (
            f"/{name}" if name else ""
        )
        request = self.client.param_serialize(
            method=method,
            resource_path=path,
            body=manifest,
            auth_settings=["BearerToken"],
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
        )
        response: Any = self.client.call_api(*request)  # its read() is untyped, its data None until read
        response.read()
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return self._plain(response)

    @staticmethod
    def _plain(response: Any) -> dict[str, Any]:
        """The answer's JSON as plain dicts. The calls ask for the raw answer
        (_preload_content=False): the client would build its typed models from the JSON, and we
        would turn them back into dicts (most of the client's CPU per call, in the profile)."""
        answer: dict[str, Any] = json.loads(response.data)
        return answer

    def read(self, kind: str, namespace: str, name: str, api_version: str | None = None) -> dict[str, Any] | None:
        """``api_version`` is needed only for a kind of another API group (a PodGroup)."""
        try:
            if kind == render_meta.PODGROUP_KIND:
                return self._read_podgroup(_api_version(api_version), namespace, name)
            return self._plain(self._read_call(kind)(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def read_claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A checkpoint claim the job did not create: one read per CLAIM_CACHE_S per claim."""
        key, at = (namespace, name), time.monotonic()
        with self._claims_lock:
            cached = self._claims.get(key)
            if cached is not None and at - cached[0] < CLAIM_CACHE_S:
                return cached[1]
        claim = self.read("PersistentVolumeClaim", namespace, name)
        with self._claims_lock:
            if claim is None:
                self._claims.pop(key, None)
            else:
                self._claims = {k: v for k, v in self._claims.items() if at - v[0] < CLAIM_CACHE_S}
                self._claims[key] = (at, claim)
        return claim

    def listed(self, kind: str, namespace: str) -> dict[str, dict[str, Any]]:
        """Our children of one of LISTED_KINDS in a namespace, by name: one LIST per
        LISTING_TTL_S per namespace and kind (concurrent callers wait for the one listing)."""
        key = (namespace, kind)
        with self._listings_lock:
            lock = self._listing_locks.setdefault(key, threading.Lock())
        with lock:
            cached = self._listings.get(key)
            if cached is not None and time.monotonic() - cached[0] < LISTING_TTL_S:
                return cached[1]
            at = time.monotonic()
            answer = self._list_call(kind)(namespace, label_selector=OUR_CHILDREN_SELECTOR, _preload_content=False)
            listing = self._plain(answer)
            # A LIST's items carry no kind: ensure_child and a replace need it.
            by_name = {
                item["metadata"]["name"]: {"apiVersion": listing.get("apiVersion"), "kind": kind, **item}
                for item in listing.get("items") or []
            }
            self._listings[key] = (at, by_name)
            return by_name

    def _list_call(self, kind: str) -> Callable[..., Any]:
        return {
            "ServiceAccount": self.core.list_namespaced_service_account,
            "Role": self.rbac.list_namespaced_role,
            "RoleBinding": self.rbac.list_namespaced_role_binding,
            "PersistentVolumeClaim": self.core.list_namespaced_persistent_volume_claim,
            "Service": self.core.list_namespaced_service,
            "NetworkPolicy": self.networking.list_namespaced_network_policy,
        }[kind]

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        if manifest["kind"] == render_meta.PODGROUP_KIND:
            return self._create_podgroup(manifest)
        return self._write("POST", manifest)

    def replace(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        if manifest["kind"] == render_meta.PODGROUP_KIND:
            return self._replace_podgroup(manifest)
        return self._write("PUT", manifest, meta["name"])

    # A gang's PodGroup: a custom object of the scheduler's group (render_meta.PODGROUP_API_VERSION).
    def _read_podgroup(self, api_version: str, namespace: str, name: str) -> dict[str, Any]:
        group, version = api_version.split("/")
        return _custom_object(
            self.custom.get_namespaced_custom_object(group, version, namespace, render_meta.PODGROUP_PLURAL, name)
        )

    def _create_podgroup(self, manifest: dict[str, Any]) -> dict[str, Any]:
        group, version = manifest["apiVersion"].split("/")
        namespace = manifest["metadata"]["namespace"]
        return _custom_object(
            self.custom.create_namespaced_custom_object(
                group, version, namespace, render_meta.PODGROUP_PLURAL, manifest
            )
        )

    def _replace_podgroup(self, manifest: dict[str, Any]) -> dict[str, Any]:
        group, version = manifest["apiVersion"].split("/")
        meta = manifest["metadata"]
        return _custom_object(
            self.custom.replace_namespaced_custom_object(
                group, version, meta["namespace"], render_meta.PODGROUP_PLURAL, meta["name"], manifest
            )
        )

    def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return _custom_object(
                self.custom.get_namespaced_custom_object(
                    contract.GROUP, contract.VERSION, namespace, contract.PLURAL, name
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def delete_pod(self, namespace: str, name: str, grace_period_seconds: int) -> None:
        """Delete a pod (its StatefulSet creates it again); gone already is fine."""
        try:
            self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=grace_period_seconds)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def delete_job(self, namespace: str, name: str, uid: str) -> None:
        """Delete the SFTJob with this uid (not a job created again under its name)."""
        body = kubernetes.client.V1DeleteOptions(preconditions=kubernetes.client.V1Preconditions(uid=uid))
        try:
            self.custom.delete_namespaced_custom_object(
                contract.GROUP, contract.VERSION, namespace, contract.PLURAL, name, body=body
            )
        except ApiException as exc:
            if exc.status not in (404, 409):  # gone, or another job under the same name now
                raise

    def post_event(self, job: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """An Event about the SFTJob (what `kubectl describe` and `sft-operator events` show).
        Posted by us, not kopf.event: the run-policy clock posts from outside kopf's handlers.
        An Event that cannot be posted is logged, never a reason to fail the caller."""
        meta = job["metadata"]
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": contract.API_VERSION,
                "kind": contract.KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": fit_message(message),
            "source": {"component": "sft-operator"},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self._write("POST", event)
        except ApiException as exc:
            log.warning("%s/%s: Event %s not posted: %s", meta["namespace"], meta["name"], reason, exc.reason)

    def patch_job_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            contract.GROUP, contract.VERSION, namespace, contract.PLURAL, name, {"status": status}
        )


def _api_version(api_version: str | None) -> str:
    if api_version is None:
        raise ValueError("reading a PodGroup needs its apiVersion")
    return api_version


def _custom_object(answer: object) -> dict[str, Any]:
    """The client types a custom object as ``object``; it is the JSON object the API server sent."""
    return cast(dict[str, Any], answer)
