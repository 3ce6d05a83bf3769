"""The children of an SFTJob in the API: a small typed adapter and the update policy.

``converge`` creates what is missing and brings what exists to what the job asks, touching an
object only when something differs (re-applying a job writes nothing). A refused change to an
immutable field is reported and the job goes on as created; an object of the same name that is
not the job's is never taken over.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import kopf
import kubernetes
import pydantic
from kubernetes.client.exceptions import ApiException

from sft_core import contract
from sft_core.events import fit_message
from sft_models import naming
from sft_models.models import InvalidSpecError, Reason, SFTJob
from sft_operator import render
from sft_operator.status import SpecProblem, VolumeCheck, check_checkpoint_claim

log = logging.getLogger("sft_operator")
# A job's children other than its StatefulSet are independent of each other: they are created
# (or, for a job that exists already, read) concurrently, a few requests' latency per job instead
# of one per child. Shared by every handler thread; a task never waits for another.
CHILD_THREADS = 16
_children_pool = ThreadPoolExecutor(max_workers=CHILD_THREADS, thread_name_prefix="sft-children")
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


class Kube:
    """The few typed calls the operator makes, by kind; reads return dicts, 404 is None."""

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
        path = f"{root}/namespaces/{meta['namespace']}/{render.resource_plural(manifest['kind'])}" + (
            f"/{name}" if name else "")
        request = self.client.param_serialize(
            method=method, resource_path=path, body=manifest, auth_settings=["BearerToken"],
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
        )
        response = self.client.call_api(*request)
        response.read()
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return json.loads(response.data)

    @staticmethod
    def _plain(response: Any) -> dict[str, Any]:
        """The answer's JSON as plain dicts. The calls ask for the raw answer
        (_preload_content=False): the client would build its typed models from the JSON, and we
        would turn them back into dicts (most of the client's CPU per call, in the profile)."""
        return json.loads(response.data)

    def read(self, kind: str, namespace: str, name: str, api_version: str | None = None) -> dict[str, Any] | None:
        """``api_version`` is needed only for a kind of another API group (a PodGroup)."""
        try:
            if kind == render.PODGROUP_KIND:
                return self.read_podgroup(_api_version(api_version), namespace, name)
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
            listing = json.loads(answer.data)
            # A LIST's items carry no kind: ensure_child and a replace need it.
            by_name = {item["metadata"]["name"]: {"apiVersion": listing.get("apiVersion"), "kind": kind, **item}
                       for item in listing.get("items") or []}
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
        if manifest["kind"] == render.PODGROUP_KIND:
            return self.create_podgroup(manifest)
        return self._write("POST", manifest)

    def replace(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        if manifest["kind"] == render.PODGROUP_KIND:
            return self.replace_podgroup(manifest)
        return self._write("PUT", manifest, meta["name"])

    # A gang's PodGroup: a custom object of the scheduler's group (render.PODGROUP_API_VERSION).
    def read_podgroup(self, api_version: str, namespace: str, name: str) -> dict[str, Any]:
        group, version = api_version.split("/")
        return self.custom.get_namespaced_custom_object(group, version, namespace, render.PODGROUP_PLURAL, name)

    def create_podgroup(self, manifest: dict[str, Any]) -> dict[str, Any]:
        group, version = manifest["apiVersion"].split("/")
        namespace = manifest["metadata"]["namespace"]
        return self.custom.create_namespaced_custom_object(group, version, namespace, render.PODGROUP_PLURAL, manifest)

    def replace_podgroup(self, manifest: dict[str, Any]) -> dict[str, Any]:
        group, version = manifest["apiVersion"].split("/")
        meta = manifest["metadata"]
        return self.custom.replace_namespaced_custom_object(
            group, version, meta["namespace"], render.PODGROUP_PLURAL, meta["name"], manifest
        )

    def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(contract.GROUP, contract.VERSION, namespace, contract.PLURAL, name)
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
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": contract.API_VERSION, "kind": contract.KIND, "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid")},
            "type": type_, "reason": reason, "message": fit_message(message),
            "source": {"component": "sft-operator"}, "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
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


class Refused(Exception):
    """The API refused a child as invalid: a spec problem, not worth retrying."""


# How the API server refuses a body: 422 (invalid), 400 (not even decodable as the kind, e.g.
# a number where a pod's env value, a string, belongs).
REFUSALS = (400, 422)


def _create_or_read(kube: Kube, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(object, created). An object that already exists (409) is fine: read it."""
    meta = manifest["metadata"]
    try:
        return kube.create(manifest), True
    except ApiException as exc:
        if exc.status in REFUSALS:
            raise Refused(f"{manifest['kind']} {meta['name']}: {_refusal_message(manifest, exc)}") from None
        if exc.status == 404 and manifest["kind"] == render.PODGROUP_KIND:
            raise Refused(_podgroup_api_missing(manifest)) from None
        if exc.status == 403 and "NamespaceTerminating" in (exc.body or ""):
            # The namespace is going away with the job in it: nothing to converge, no retries.
            raise kopf.PermanentError(f"namespace {meta['namespace']} is being deleted") from None
        if exc.status != 409:
            raise
    existing = kube.read(manifest["kind"], meta["namespace"], meta["name"], manifest["apiVersion"])
    if existing is None:  # deleted in between: the next attempt creates it
        raise kopf.TemporaryError(f"{manifest['kind']} {meta['name']} vanished while being created", delay=1)
    return existing, False


def _podgroup_api_missing(manifest: dict[str, Any]) -> str:
    """A gang job on a cluster without its scheduler's PodGroup CRD: a spec problem, not a retry."""
    group, version = manifest["apiVersion"].split("/")
    provider = "the scheduler-plugins coscheduling plugin" if group.endswith("x-k8s.io") else "Volcano"
    return (
        f"spec.scheduling.gang: the cluster has no PodGroup API {group}/{version} (CRD "
        f"{render.PODGROUP_PLURAL}.{group} is not installed): install {provider}, or remove spec.scheduling.gang"
    )


# Kueue's StatefulSet webhook refuses a scale-up from 0 (a resume) while the pods of the
# scale-down still terminate or its Workload is still being deleted: a wait, not a spec problem.
KUEUE_SCALE_DOWN_IN_PROGRESS = ("scaling down is still in progress", "from previous scale-down is still being deleted")


def _queue_still_scaling_down(message: str) -> bool:
    return any(phrase in message for phrase in KUEUE_SCALE_DOWN_IN_PROGRESS)


def _refusal_message(manifest: dict[str, Any], exc: ApiException) -> str:
    """Why the API server refused a body. A body it could not even decode (400: a number where
    a string belongs) is named by the client's model of the kind, which says the field's path
    (spec.template.spec.containers.0.env.3.value) where the API server prints its Go types.
    Checked only after a refusal: building the model of every body cost more than sending it."""
    model = getattr(kubernetes.client, f"V1{manifest['kind']}", None)
    if exc.status == 400 and isinstance(model, type) and issubclass(model, pydantic.BaseModel):
        try:
            model.model_validate(manifest)
        except pydantic.ValidationError as invalid:
            return _client_message(invalid)
    return _api_message(exc)


def _client_message(exc: pydantic.ValidationError) -> str:
    """The client's complaint about a body, by path inside the object (e.g. spec.template...)."""
    return "; ".join(f"{'.'.join(str(item) for item in error['loc'])}: {error['msg']}"
                     for error in exc.errors(include_url=False))


def _api_message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body or "{}").get("message") or str(exc.reason)
    except ValueError:
        return str(exc.reason)


def ensure_child(kube: Kube, manifest: dict[str, Any], existing: dict[str, Any] | None, *,
                 observed: bool = False) -> dict[str, Any]:
    """Create a missing child; bring an existing one to what the job asks, touching it only when
    something differs (so re-applying a job writes nothing). An object of the same name that
    is not this job's is never taken over. ``observed``: ``existing`` comes from a watch or a
    listing (perhaps a summary, perhaps not the latest version), not from a read: enough to tell
    that nothing differs, and read again before it is replaced."""
    kind = manifest["kind"]
    if existing is None:
        existing, created = _create_or_read(kube, manifest)
        if created:
            return existing
    meta = existing["metadata"]
    want_meta = manifest["metadata"]
    labels = meta.get("labels") or {}
    job_name = want_meta["labels"][contract.LABEL_JOB_NAME]
    if labels.get(contract.LABEL_MANAGED_BY) != contract.MANAGED_BY or labels.get(contract.LABEL_JOB_NAME) != job_name:
        hint = " (to use it for checkpoints, set spec.checkpoints.existingClaim)" if kind == "PersistentVolumeClaim" else ""
        raise Refused(f"{kind} {meta['name']} already exists and does not belong to this job{hint}")
    # A job deleted and created again under the same name adopts what the old one left behind
    # (the kept checkpoint claim above all), so owner references follow the job's uid.
    have_owners = [o for o in meta.get("ownerReferences") or [] if o.get("kind") == contract.KIND]
    want_owners = want_meta.get("ownerReferences", [])
    if kind == "PersistentVolumeClaim":  # ... but never a claim another job created
        want_owners = render.claim_owner_references(manifest, existing)
    owners_differ = [o["uid"] for o in have_owners] != [o["uid"] for o in want_owners]
    updated = copy.deepcopy(existing)
    if owners_differ:
        others = [o for o in meta.get("ownerReferences") or [] if o.get("kind") != contract.KIND]
        updated["metadata"]["ownerReferences"] = others + want_owners
    if kind == "StatefulSet":
        want = want_meta["annotations"][render.ANNOTATION_DESIRED_HASH]
        if (meta.get("annotations") or {}).get(render.ANNOTATION_DESIRED_HASH) == want and not owners_differ:
            return existing
        updated["metadata"]["labels"] = want_meta["labels"]
        updated["metadata"]["annotations"] = {**(meta.get("annotations") or {}), **want_meta["annotations"]}
        updated["spec"] = manifest["spec"]
    elif kind == "ConfigMap" and want_meta["labels"].get(contract.LABEL_COMPONENT) != render.COMPONENT_PROGRESS:
        if existing.get("data") == manifest["data"] and not owners_differ:
            return existing
        updated["data"] = manifest["data"]
    elif kind == "Role":
        if existing.get("rules") == manifest["rules"] and not owners_differ:
            return existing
        updated["rules"] = manifest["rules"]
    elif kind == render.PODGROUP_KIND:
        # Only the fields we set: a scheduler's webhook may default others (Volcano's queue).
        have_spec = existing.get("spec") or {}
        if all(have_spec.get(k) == v for k, v in manifest["spec"].items()) and not owners_differ:
            return existing
        updated["spec"] = {**have_spec, **manifest["spec"]}
    elif kind == "RoleBinding":
        if existing.get("subjects") == manifest["subjects"] and not owners_differ:
            return existing
        updated["subjects"] = manifest["subjects"]
    elif kind == "NetworkPolicy":
        # All of it: a rule someone added would open the job's pods to more than the job.
        if existing.get("spec") == manifest["spec"] and not owners_differ:
            return existing
        updated["spec"] = manifest["spec"]
    elif not owners_differ:
        # Service, PersistentVolumeClaim, ServiceAccount, and the progress ConfigMap (its data is
        # the reporter's): only the owner may change.
        return existing
    if observed:  # replace the whole object, as it is now
        fresh = kube.read(kind, meta["namespace"], meta["name"], manifest["apiVersion"])
        return ensure_child(kube, manifest, fresh)
    try:
        return kube.replace(updated)
    except ApiException as exc:
        if exc.status == 409:  # changed under us: read again and retry soon
            raise kopf.TemporaryError(f"{kind} {meta['name']} changed while being updated", delay=1) from None
        if exc.status == 422 and kind == "StatefulSet" and _queue_still_scaling_down(_api_message(exc)):
            raise kopf.TemporaryError(f"{kind} {meta['name']}: {_api_message(exc)}; retrying", delay=5) from None
        if exc.status in REFUSALS:
            raise Refused(f"{kind} {meta['name']}: {_refusal_message(updated, exc)}") from None
        raise


# What ensure_child compares of a child (metadata: ownership, owners, a StatefulSet's desired
# hash and accepted spec; a Role's rules, a RoleBinding's subjects, a ConfigMap's data) and what
# the status reads of a StatefulSet (spec.replicas). A progress ConfigMap's data is the
# reporter's and never compared.
_SUMMARY_METADATA = ("name", "namespace", "uid", "labels", "annotations", "ownerReferences", "deletionTimestamp")
_SUMMARY_FIELDS = ("data", "rules", "subjects")


def child_summary(body: Mapping[str, Any]) -> dict[str, Any]:
    """A child as a watch delivers it, cut to what converging and the status read of it: what
    kopf's indexes keep per child instead of whole bodies."""
    meta = body.get("metadata") or {}
    summary: dict[str, Any] = {
        "apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
        "metadata": {k: copy.deepcopy(meta[k]) for k in _SUMMARY_METADATA if meta.get(k) is not None},
    }
    progress = (meta.get("labels") or {}).get(contract.LABEL_COMPONENT) == render.COMPONENT_PROGRESS
    for field in _SUMMARY_FIELDS:
        if field in body and not (field == "data" and progress):
            summary[field] = copy.deepcopy(body[field])
    if body.get("kind") == "StatefulSet":
        summary["spec"] = {"replicas": (body.get("spec") or {}).get("replicas")}
    return summary


@dataclass(frozen=True)
class KnownChildren:
    """A job's children as the operator's watches show them, for a resume: for a kind in
    ``kinds`` (the kinds watched), a child absent from ``objects`` does not exist. Children of
    LISTED_KINDS come from a listing; anything else (a gang's PodGroup) is read."""

    kinds: frozenset[str]
    objects: Mapping[tuple[str, str], dict[str, Any]]  # (kind, name) -> child_summary

    def find(self, kube: Kube, manifest: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
        """(known, existing): whether the child is known without reading it, and what it is."""
        kind, meta = manifest["kind"], manifest["metadata"]
        if kind in self.kinds:
            return True, self.objects.get((kind, meta["name"]))
        if kind in LISTED_KINDS:
            return True, kube.listed(kind, meta["namespace"]).get(meta["name"])
        return False, None


@dataclass(frozen=True)
class Converged:
    """What converging a job's children found."""

    statefulset: dict[str, Any] | None
    problem: SpecProblem | None  # a refusal: the spec's (immutable change) or the API's (422)
    volume: VolumeCheck | None  # whether the checkpoint claim serves the job (None: not checked)


def converge(kube: Kube, job: SFTJob, statefulset: dict[str, Any] | None, *, fresh: bool,
             reporter_image: str, known: KnownChildren | None = None) -> Converged:
    """Create/update the children. ``fresh``: the job was just created, so try creating first
    instead of reading (one request per child instead of two). ``known``: the children as the
    watches and listings show them (an operator restart resuming every job): nothing is read
    unless something differs.

    A refused change to an immutable field is reported (the problem returned) and the job goes
    on as it was created: its mutable fields (suspend, pod settings) still apply and a finished
    job still scales to 0, so a pending refusal never holds pods."""
    namespace = job.metadata.namespace
    sts_name = naming.statefulset_name(job)
    if known is not None:
        statefulset = known.objects.get(("StatefulSet", sts_name))
    elif statefulset is None and not fresh:
        statefulset = kube.read("StatefulSet", namespace, sts_name)
    problem: SpecProblem | None = None
    if statefulset is not None:
        job, problem = _as_accepted(job, statefulset)
    claim: dict[str, Any] | None = None
    children = render.render_children(job, reporter_image)
    # Everything before the StatefulSet concurrently, in two waves: a RoleBinding after its Role
    # (the API server refuses to bind a Role it cannot find, unless the binder may `bind`); then
    # the StatefulSet, so its pods never come before their claim, config, identity or gang.
    waves = [[m for m in children if m["kind"] not in ("StatefulSet", "RoleBinding")],
             [m for m in children if m["kind"] == "RoleBinding"]]
    try:
        for wave in waves:
            for manifest, obj in zip(wave, _ensure_concurrently(kube, wave, fresh, known)):
                if manifest["kind"] == "PersistentVolumeClaim":
                    claim = obj
        manifest = next(manifest for manifest in children if manifest["kind"] == "StatefulSet")
        if statefulset is not None:
            statefulset = ensure_child(kube, manifest, statefulset, observed=known is not None)
        else:
            statefulset = ensure_child(kube, manifest, None)
            job, problem = _as_accepted(job, statefulset)  # another writer won a race
            if problem is not None:
                statefulset = ensure_child(kube, render.render_statefulset(job, reporter_image), statefulset)
    except Refused as exc:
        return Converged(statefulset, SpecProblem(Reason.INVALID_SPEC, str(exc)), None)
    if job.spec.checkpoints.existing_claim is not None:
        claim = kube.read_claim(namespace, job.spec.checkpoints.existing_claim)
    kept_for = None
    if job.spec.checkpoints.claim is not None and job.spec.checkpoints.delete_with_job and claim is not None \
            and not naming.created_by(claim, job.metadata.uid):
        kept_for = naming.claim_creator(claim) or "unrecorded"
    return Converged(statefulset, problem,
                     check_checkpoint_claim(job.spec.nnodes, claim, naming.claim_name(job), created_by_other=kept_for))


def _ensure_one(kube: Kube, manifest: dict[str, Any], fresh: bool, known: KnownChildren | None) -> dict[str, Any]:
    meta = manifest["metadata"]
    if fresh:
        return ensure_child(kube, manifest, None)
    if known is not None:
        found, existing = known.find(kube, manifest)
        if found:
            return ensure_child(kube, manifest, existing, observed=True)
    existing = kube.read(manifest["kind"], meta["namespace"], meta["name"], manifest["apiVersion"])
    return ensure_child(kube, manifest, existing)


def _ensure_concurrently(kube: Kube, manifests: list[dict[str, Any]], fresh: bool,
                         known: KnownChildren | None) -> list[dict[str, Any]]:
    """ensure_child for each manifest, concurrently; every call finishes before this returns.
    A failure is raised once all are done, the first in the manifests' order (a refusal names the
    same child as one at a time would; the others are created all the same, owned by the job)."""
    if len(manifests) == 1:
        return [_ensure_one(kube, manifests[0], fresh, known)]
    futures = [_children_pool.submit(_ensure_one, kube, manifest, fresh, known) for manifest in manifests]
    results: list[dict[str, Any]] = []
    failure: BaseException | None = None
    for future in futures:
        try:
            results.append(future.result())
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others finished
            failure = failure or exc
    if failure is not None:
        raise failure
    return results


def _as_accepted(job: SFTJob, statefulset: dict[str, Any]) -> tuple[SFTJob, SpecProblem | None]:
    """The job as it runs (immutable fields as created) and the refusal of any change to them."""
    changes = render.immutable_changes(job, statefulset)
    if not changes:
        return job, None
    problem = SpecProblem(Reason.IMMUTABLE_FIELD_CHANGED, join_problems(changes))
    try:
        return render.job_as_accepted(job, statefulset), problem
    except InvalidSpecError:  # cannot happen for a spec accepted before; never converge a guess
        raise kopf.PermanentError(f"cannot rebuild the accepted spec: {problem.message}") from None


def join_problems(problems: Iterable[tuple[str, str]]) -> str:
    return "; ".join(f"{path}: {message}" for path, message in problems)
