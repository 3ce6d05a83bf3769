"""kopf wiring: watch SFTJobs and their children, converge the children, publish the status.

All decisions live in pure modules (models: validation; render: manifests and immutability;
status: phase and conditions). This module only reads and writes the API:

- create/resume/update of an SFTJob: validate, refuse immutable changes, create missing
  children, update the StatefulSet only when its desired digest changed, publish the status;
- pod and StatefulSet events of our jobs (kopf indexes, by label): re-derive the status from the
  indexes, no API reads; a deleted StatefulSet is re-created.

The status is patched only when it differs, events are posted only when the phase or the
refusal changes, and the operator never writes spec. kopf's annotations and finalizer use our
group's prefix; no finalizer is needed (children go by owner reference), so deleting a job never
waits for the operator.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import kopf
import kubernetes
import pydantic
from kubernetes.client.exceptions import ApiException

from sft_operator import contract, kubeclient, render
from sft_operator.events import fit_message
from sft_operator.models import (
    ConditionType,
    InvalidSpecError,
    Phase,
    Reason,
    SFTJob,
    SFTJobSpec,
    SFTJobStatus,
    parse_job,
)
from sft_operator.progress import TrainingProgress
from sft_operator.status import (
    SpecProblem,
    VolumeCheck,
    check_checkpoint_claim,
    derive_status,
    phase_event_message,
    rfc3339,
)

JOB = (contract.GROUP, contract.VERSION, contract.PLURAL)
OUR_CHILDREN = {contract.LABEL_MANAGED_BY: contract.MANAGED_BY, contract.LABEL_JOB_NAME: kopf.PRESENT}
PROGRESS = {**OUR_CHILDREN, contract.LABEL_COMPONENT: render.COMPONENT_PROGRESS}
log = logging.getLogger("sft_operator")
CONSISTENCY_TIMEOUT_S = 120.0

# --- API access -------------------------------------------------------------------------------


class Kube:
    """The few typed calls the operator makes, by kind; reads return dicts, 404 is None."""

    def __init__(self, api_client: kubernetes.client.ApiClient):
        self.client = api_client
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.apps = kubernetes.client.AppsV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.rbac = kubernetes.client.RbacAuthorizationV1Api(api_client)

    def _calls(self, kind: str) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
        return {
            "StatefulSet": (
                self.apps.read_namespaced_stateful_set,
                self.apps.create_namespaced_stateful_set,
                self.apps.replace_namespaced_stateful_set,
            ),
            "Service": (
                self.core.read_namespaced_service,
                self.core.create_namespaced_service,
                self.core.replace_namespaced_service,
            ),
            "ConfigMap": (
                self.core.read_namespaced_config_map,
                self.core.create_namespaced_config_map,
                self.core.replace_namespaced_config_map,
            ),
            "PersistentVolumeClaim": (
                self.core.read_namespaced_persistent_volume_claim,
                self.core.create_namespaced_persistent_volume_claim,
                self.core.replace_namespaced_persistent_volume_claim,
            ),
            "ServiceAccount": (
                self.core.read_namespaced_service_account,
                self.core.create_namespaced_service_account,
                self.core.replace_namespaced_service_account,
            ),
            "Role": (
                self.rbac.read_namespaced_role,
                self.rbac.create_namespaced_role,
                self.rbac.replace_namespaced_role,
            ),
            "RoleBinding": (
                self.rbac.read_namespaced_role_binding,
                self.rbac.create_namespaced_role_binding,
                self.rbac.replace_namespaced_role_binding,
            ),
        }[kind]

    def _plain(self, obj: Any) -> dict[str, Any]:
        return self.client.sanitize_for_serialization(obj)

    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._plain(self._calls(kind)[0](name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        return self._plain(self._calls(manifest["kind"])[1](meta["namespace"], manifest))

    def replace(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        return self._plain(self._calls(manifest["kind"])[2](meta["name"], meta["namespace"], manifest))

    def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(contract.GROUP, contract.VERSION, namespace, contract.PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_job_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            contract.GROUP, contract.VERSION, namespace, contract.PLURAL, name, {"status": status}
        )


# --- converging children ----------------------------------------------------------------------


class Refused(Exception):
    """The API refused a child as invalid (422): a spec problem, not worth retrying."""


def _create_or_read(kube: Kube, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(object, created). An object that already exists (409) is fine: read it."""
    meta = manifest["metadata"]
    try:
        return kube.create(manifest), True
    except pydantic.ValidationError as exc:  # the client checks bodies before sending them
        raise Refused(f"{manifest['kind']} {meta['name']}: {_client_message(exc)}") from None
    except ApiException as exc:
        if exc.status == 422:
            raise Refused(f"{manifest['kind']} {meta['name']}: {_api_message(exc)}") from None
        if exc.status == 403 and "NamespaceTerminating" in (exc.body or ""):
            # The namespace is going away with the job in it: nothing to converge, no retries.
            raise kopf.PermanentError(f"namespace {meta['namespace']} is being deleted") from None
        if exc.status != 409:
            raise
    existing = kube.read(manifest["kind"], meta["namespace"], meta["name"])
    if existing is None:  # deleted in between: the next attempt creates it
        raise kopf.TemporaryError(f"{manifest['kind']} {meta['name']} vanished while being created", delay=1)
    return existing, False


def _client_message(exc: pydantic.ValidationError) -> str:
    """The client's complaint about a body, by path inside the object (e.g. spec.template...)."""
    parts = []
    for error in exc.errors(include_url=False):
        loc = [str(item) for item in error["loc"][1:]]  # [0] is the argument position
        parts.append(f"{'.'.join(loc)}: {error['msg']}")
    return "; ".join(parts)


def _api_message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body or "{}").get("message") or str(exc.reason)
    except ValueError:
        return str(exc.reason)


def _ensure(kube: Kube, manifest: dict[str, Any], existing: dict[str, Any] | None) -> dict[str, Any]:
    """Create a missing child; bring an existing one to what the job asks, touching it only when
    something differs (so re-applying a job writes nothing). An object of the same name that
    is not this job's is never taken over."""
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
    elif kind == "RoleBinding":
        if existing.get("subjects") == manifest["subjects"] and not owners_differ:
            return existing
        updated["subjects"] = manifest["subjects"]
    elif not owners_differ:
        # Service, PersistentVolumeClaim, ServiceAccount, and the progress ConfigMap (its data is
        # the reporter's): only the owner may change.
        return existing
    try:
        return kube.replace(updated)
    except pydantic.ValidationError as exc:
        raise Refused(f"{kind} {meta['name']}: {_client_message(exc)}") from None
    except ApiException as exc:
        if exc.status == 409:  # changed under us: read again and retry soon
            raise kopf.TemporaryError(f"{kind} {meta['name']} changed while being updated", delay=1) from None
        if exc.status == 422:
            raise Refused(f"{kind} {meta['name']}: {_api_message(exc)}") from None
        raise


def converge(kube: Kube, job: SFTJob, statefulset: dict[str, Any] | None, fresh: bool) -> tuple[
    dict[str, Any] | None, SpecProblem | None, VolumeCheck | None
]:
    """Create/update the children. ``fresh``: the job was just created, so try creating first
    instead of reading (one request per child instead of two).

    A refused change to an immutable field is reported (the problem returned) and the job goes
    on as it was created: its mutable fields (suspend, pod settings) still apply and a finished
    job still scales to 0, so a pending refusal never holds pods."""
    namespace = job.metadata.namespace
    sts_name = render.statefulset_name(job)
    if statefulset is None and not fresh:
        statefulset = kube.read("StatefulSet", namespace, sts_name)
    problem: SpecProblem | None = None
    if statefulset is not None:
        job, problem = _as_accepted(job, statefulset)
    claim: dict[str, Any] | None = None
    try:
        for manifest in render.render_children(job, _reporter_image):
            kind = manifest["kind"]
            if kind == "StatefulSet":
                if statefulset is not None:
                    statefulset = _ensure(kube, manifest, statefulset)
                    continue
                statefulset = _ensure(kube, manifest, None)
                job, problem = _as_accepted(job, statefulset)  # another writer won a race
                if problem is not None:
                    statefulset = _ensure(kube, render.render_statefulset(job, _reporter_image), statefulset)
            else:
                existing = None if fresh else kube.read(kind, namespace, manifest["metadata"]["name"])
                obj = _ensure(kube, manifest, existing)
                if kind == "PersistentVolumeClaim":
                    claim = obj
    except Refused as exc:
        return statefulset, SpecProblem(Reason.INVALID_SPEC, str(exc)), None
    if job.spec.checkpoints.existing_claim is not None:
        claim = kube.read("PersistentVolumeClaim", namespace, job.spec.checkpoints.existing_claim)
    return statefulset, problem, check_checkpoint_claim(job.spec.nnodes, claim, render.claim_name(job))


def _as_accepted(job: SFTJob, statefulset: dict[str, Any]) -> tuple[SFTJob, SpecProblem | None]:
    """The job as it runs (immutable fields as created) and the refusal of any change to them."""
    changes = render.immutable_changes(job, statefulset)
    if not changes:
        return job, None
    problem = SpecProblem(Reason.IMMUTABLE_FIELD_CHANGED, _join(changes))
    try:
        return render.job_as_accepted(job, statefulset), problem
    except InvalidSpecError:  # cannot happen for a spec accepted before; never converge a guess
        raise kopf.PermanentError(f"cannot rebuild the accepted spec: {problem.message}") from None


def _join(problems: Iterable[tuple[str, str]]) -> str:
    return "; ".join(f"{path}: {message}" for path, message in problems)


# --- status -----------------------------------------------------------------------------------


class JobState:
    """Per-job lock and the last status we wrote (fresher than the watch until it catches up)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self.written: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}

    def lock(self, key: tuple[str, str]) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def forget(self, key: tuple[str, str]) -> None:
        with self._guard:
            self._locks.pop(key, None)
            self.written.pop(key, None)


def _now() -> str:
    return rfc3339(datetime.now(timezone.utc))


def assess(body: dict[str, Any], statefulset: dict[str, Any] | None) -> tuple[SFTJob | None, SpecProblem | None]:
    """The parsed job, and the operator's objection to its spec, if any."""
    try:
        job = parse_job(body)
    except InvalidSpecError as exc:
        return None, SpecProblem(Reason.INVALID_SPEC, str(exc))
    if statefulset is not None:
        changes = render.immutable_changes(job, statefulset)
        if changes:
            return job, SpecProblem(Reason.IMMUTABLE_FIELD_CHANGED, _join(changes))
    return job, None


def publish(
    kube: Kube,
    state: JobState,
    body: dict[str, Any],
    statefulset: dict[str, Any] | None,
    pods: Iterable[dict[str, Any]],
    problem: SpecProblem | None,
    volume: VolumeCheck | None,
    progress: TrainingProgress | None = None,
) -> SFTJobStatus:
    """Derive the status; patch it only when it changed; post an Event on a phase change or a
    new refusal. Returns the status now in force."""
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    written = state.written.get(key)
    raw = written[1] if written and written[0] == meta.get("uid") else body.get("status")
    current = SFTJobStatus.model_validate(raw) if raw else None
    spec = body.get("spec") or {}
    nnodes = spec.get("nnodes") if isinstance(spec.get("nnodes"), int) else 1
    max_restarts = spec.get("maxRestarts")
    if not isinstance(max_restarts, int):  # no CRD defaulting (e.g. a CRD installed without it)
        max_restarts = SFTJobSpec.model_fields["max_restarts"].default
    new = derive_status(
        current,
        generation=meta.get("generation"),
        nnodes=nnodes,
        statefulset=statefulset,
        pods=pods,
        problem=problem,
        volume=volume,
        now=_now(),
        progress=progress,
        max_restarts=max_restarts,
    )
    new_api = new.to_api()
    if current is not None and current.to_api() == new_api:
        return current
    try:
        kube.patch_job_status(key[0], key[1], new_api)
    except ApiException as exc:
        if exc.status == 404:  # deleted meanwhile
            return new
        raise
    state.written[key] = (meta.get("uid", ""), new_api)
    old_phase = current.phase if current is not None else None
    if new.phase != old_phase:
        kind = "Warning" if new.phase is Phase.FAILED else "Normal"
        kopf.event(body, type=kind, reason=new.phase.value, message=fit_message(phase_event_message(new, problem)))
        log.info("%s/%s: phase %s -> %s", key[0], key[1], old_phase.value if old_phase else None, new.phase.value)
    if problem is not None:  # a new refusal (InvalidSpec, ImmutableFieldChanged): say why, once
        previous = next((c for c in (current.conditions if current else []) if c.type == ConditionType.SPEC_VALID.value), None)
        if previous is None or previous.message != problem.message:
            kopf.event(body, type="Warning", reason=problem.reason.value, message=fit_message(problem.message))
    return new


def _progress(progress_by_job: kopf.Index[Any, Any], key: tuple[str, str]) -> TrainingProgress | None:
    raw = _one(progress_by_job, key)
    return TrainingProgress.model_validate(raw) if raw else None


def _scale_down_if_over(kube: Kube, body: dict[str, Any], status: SFTJobStatus, statefulset: dict[str, Any] | None) -> None:
    """Training is over (Succeeded, or Failed by training): scale the StatefulSet to 0 for good.
    The checkpoints stay; the status, now persisted, keeps it at 0 across operator restarts."""
    if not status.training_over or statefulset is None or (statefulset.get("spec") or {}).get("replicas") == 0:
        return
    job, problem = assess({**body, "status": status.to_api()}, None)
    if job is not None and problem is None:
        converge(kube, job, None, fresh=False)


# --- kopf registration ------------------------------------------------------------------------

_api_client: kubernetes.client.ApiClient | None = None
# The reporter sidecar's image: the operator's own (set by `run`, from SFT_REPORTER_IMAGE).
_reporter_image: str = render.DEFAULT_REPORTER_IMAGE


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = f"{contract.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=contract.GROUP)
    # Labels and annotations do not matter to a job: a change to them is no reason to write.
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=contract.GROUP, ignored_fields=["metadata.labels", "metadata.annotations"]
    )
    # Only warnings from kopf itself become Events; ours are posted explicitly.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    # After storing "handled" on a job, kopf waits for that version before it looks at the job
    # again; past this timeout it takes the versions in between (our status patch, written
    # before kopf's annotation) for unhandled changes and runs the creation handler a second
    # time. The default 5 s was exceeded for about a quarter of 100 jobs created at once on
    # 2 cores (409s on every child, a GET each). Normally the version arrives in milliseconds.
    settings.persistence.consistency_timeout = CONSISTENCY_TIMEOUT_S
    # The operator watches exactly its resources (and the namespaces it was given): no CRD or
    # namespace scanning, which would need cluster-wide list/watch rights it has no use for.
    settings.scanning.disabled = True
    memo.kube = Kube(_api_client or kubeclient.BoundedApiClient())
    memo.jobs = JobState()


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf connects with the same credentials as our client (--kubeconfig, in-cluster, ...)."""
    cfg = (_api_client or kubeclient.BoundedApiClient()).configuration
    # The client keeps the token as "BearerToken" (newer) or "authorization" (older); the
    # getter also runs the in-cluster token refresh hook.
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization") or ""
    scheme, _, token = header.partition(" ") if " " in header else ("Bearer" if header else "", "", header)
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        username=cfg.username or None,
        password=cfg.password or None,
        scheme=scheme or None,
        token=token or None,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )


@kopf.index(*JOB)
def jobs_by_name(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): copy.deepcopy(dict(body))}


@kopf.index("pods", labels=OUR_CHILDREN)
def pods_by_job(namespace: str, name: str, labels: kopf.Labels, meta: kopf.Meta, status: kopf.Status, **_: Any) -> dict[Any, Any]:
    restarts = [
        {
            "name": c.get("name"),
            "restartCount": c.get("restartCount", 0),
            # How the container last ended: why a job Failed (only the few fields status reads).
            "state": _terminated_only(c.get("state")),
            "lastState": _terminated_only(c.get("lastState")),
        }
        for c in status.get("containerStatuses") or []
    ]
    return {
        (namespace, labels[contract.LABEL_JOB_NAME]): {
            "metadata": {"name": name, "deletionTimestamp": meta.get("deletionTimestamp")},
            "status": {"phase": status.get("phase"), "containerStatuses": restarts},
        }
    }


def _terminated_only(state: Any) -> dict[str, Any]:
    terminated = (state or {}).get("terminated")
    if not terminated:
        return {}
    keep = ("exitCode", "reason", "finishedAt")
    return {"terminated": {**{k: terminated.get(k) for k in keep}, "message": (terminated.get("message") or "")[-1024:]}}


@kopf.index("configmaps", labels=PROGRESS)
def progress_by_job(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """The reporter's latest summary per job (None until it published one, or if unreadable)."""
    raw = (body.get("data") or {}).get(render.PROGRESS_KEY)
    try:
        progress = TrainingProgress.model_validate_json(raw).to_api() if raw else None
    except pydantic.ValidationError as exc:
        log.warning("%s/%s: ignoring an unreadable progress summary: %s", namespace, body["metadata"]["name"], exc)
        progress = None
    return {(namespace, labels[contract.LABEL_JOB_NAME]): progress}


@kopf.index("apps", "v1", "statefulsets", labels=OUR_CHILDREN)
def statefulsets_by_job(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    annotations = dict(body.get("metadata", {}).get("annotations") or {})
    return {
        (namespace, labels[contract.LABEL_JOB_NAME]): {
            "metadata": {"name": body["metadata"]["name"], "annotations": annotations},
            "spec": {"replicas": body.get("spec", {}).get("replicas")},
        }
    }


def _one(index: kopf.Index[Any, Any], key: tuple[str, str]) -> Any:
    store = index.get(key)
    return next(iter(store), None) if store else None


@kopf.on.resume(*JOB, backoff=5)
@kopf.on.create(*JOB, backoff=5)
@kopf.on.update(*JOB, field="spec", backoff=5)
def reconcile(
    body: kopf.Body,
    reason: kopf.Reason,
    memo: kopf.Memo,
    pods_by_job: kopf.Index[Any, Any],
    progress_by_job: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    raw = copy.deepcopy(dict(body))
    key = (raw["metadata"]["namespace"], raw["metadata"]["name"])
    if raw["metadata"].get("deletionTimestamp"):
        return
    with memo.jobs.lock(key):
        fresh = reason == kopf.Reason.CREATE
        # The status we last wrote is fresher than the event's until the watch catches up: a
        # spec change right after the job finished must not render the StatefulSet back to nnodes.
        written = memo.jobs.written.get(key)
        if written is not None and written[0] == raw["metadata"].get("uid", ""):
            raw["status"] = written[1]
        try:
            job = parse_job(raw)
        except InvalidSpecError as exc:
            statefulset = None if fresh else memo.kube.read("StatefulSet", key[0], key[1])
            problem = SpecProblem(Reason.INVALID_SPEC, str(exc))
            publish(memo.kube, memo.jobs, raw, statefulset, pods_by_job.get(key, []), problem, None)
            log.warning("%s/%s: invalid spec: %s", key[0], key[1], exc)
            return
        statefulset, problem, volume = converge(memo.kube, job, None, fresh)
        status = publish(memo.kube, memo.jobs, raw, statefulset, pods_by_job.get(key, []), problem, volume,
                         _progress(progress_by_job, key))
        _scale_down_if_over(memo.kube, raw, status, statefulset)


@kopf.on.event("pods", labels=OUR_CHILDREN)
def pod_changed(
    namespace: str,
    labels: kopf.Labels,
    memo: kopf.Memo,
    jobs_by_name: kopf.Index[Any, Any],
    pods_by_job: kopf.Index[Any, Any],
    statefulsets_by_job: kopf.Index[Any, Any],
    progress_by_job: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    _refresh(memo, (namespace, labels[contract.LABEL_JOB_NAME]), jobs_by_name, pods_by_job, statefulsets_by_job,
             progress_by_job)


@kopf.on.event("configmaps", labels=PROGRESS)
def progress_changed(
    type: str,
    namespace: str,
    labels: kopf.Labels,
    memo: kopf.Memo,
    jobs_by_name: kopf.Index[Any, Any],
    pods_by_job: kopf.Index[Any, Any],
    statefulsets_by_job: kopf.Index[Any, Any],
    progress_by_job: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    """The reporter published: fold the summary into the status (and finish the job if the
    launcher's completion marker is there)."""
    if type != "DELETED":
        _refresh(memo, (namespace, labels[contract.LABEL_JOB_NAME]), jobs_by_name, pods_by_job,
                 statefulsets_by_job, progress_by_job)


@kopf.on.event("apps", "v1", "statefulsets", labels=OUR_CHILDREN)
def statefulset_changed(
    type: str,
    namespace: str,
    labels: kopf.Labels,
    memo: kopf.Memo,
    jobs_by_name: kopf.Index[Any, Any],
    pods_by_job: kopf.Index[Any, Any],
    statefulsets_by_job: kopf.Index[Any, Any],
    progress_by_job: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    key = (namespace, labels[contract.LABEL_JOB_NAME])
    if type == "DELETED":
        _restore(memo, key, jobs_by_name, pods_by_job, progress_by_job)
        return
    _refresh(memo, key, jobs_by_name, pods_by_job, statefulsets_by_job, progress_by_job)


@kopf.on.event("services", labels=OUR_CHILDREN)
@kopf.on.event("configmaps", labels=OUR_CHILDREN)
def child_changed(
    type: str,
    namespace: str,
    labels: kopf.Labels,
    memo: kopf.Memo,
    jobs_by_name: kopf.Index[Any, Any],
    pods_by_job: kopf.Index[Any, Any],
    progress_by_job: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    if type == "DELETED":
        _restore(memo, (namespace, labels[contract.LABEL_JOB_NAME]), jobs_by_name, pods_by_job, progress_by_job)


def _restore(
    memo: kopf.Memo,
    key: tuple[str, str],
    jobs_by_name: kopf.Index[Any, Any],
    pods_by_job: kopf.Index[Any, Any],
    progress_by_job: kopf.Index[Any, Any],
) -> None:
    """A child of a live job was deleted by someone: create it again (the pods resume from the
    checkpoints). The job is read from the API first: when the job itself is being deleted,
    the garbage collector deletes its children, and the watch may say so before the job's own
    deletion reaches the index."""
    body = _one(jobs_by_name, key)
    if body is None:
        return
    with memo.jobs.lock(key):
        live = memo.kube.read_job(key[0], key[1])
        if live is None or live["metadata"]["uid"] != body["metadata"]["uid"] or live["metadata"].get("deletionTimestamp"):
            return
        job, problem = assess(live, None)
        if job is not None and problem is None:
            try:
                statefulset, problem, volume = converge(memo.kube, job, None, fresh=False)
            except kopf.PermanentError as exc:
                log.info("%s/%s: not restoring children: %s", key[0], key[1], exc)
                return
            publish(memo.kube, memo.jobs, live, statefulset, pods_by_job.get(key, []), problem, volume,
                    _progress(progress_by_job, key))


@kopf.on.event(*JOB)
def job_event(type: str, namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED":
        memo.jobs.forget((namespace, name))


def _refresh(
    memo: kopf.Memo,
    key: tuple[str, str],
    jobs_by_name: kopf.Index[Any, Any],
    pods_by_job: kopf.Index[Any, Any],
    statefulsets_by_job: kopf.Index[Any, Any],
    progress_by_job: kopf.Index[Any, Any],
) -> None:
    """Re-derive a job's status from the indexes: no API reads, one patch if it changed; scale
    to 0 once training is over."""
    with memo.jobs.lock(key):
        body = _one(jobs_by_name, key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        statefulset = _one(statefulsets_by_job, key)
        _, problem = assess(body, statefulset)
        if problem is None and statefulset is None:
            problem = _standing_refusal(memo.jobs, body)
        status = publish(memo.kube, memo.jobs, body, statefulset, pods_by_job.get(key, []), problem, None,
                         _progress(progress_by_job, key))
        _scale_down_if_over(memo.kube, body, status, statefulset)


def _standing_refusal(state: JobState, body: dict[str, Any]) -> SpecProblem | None:
    """The API's refusal of a child (e.g. a pod setting the StatefulSet cannot hold) as the status
    last recorded it. The indexes cannot tell it again, and only a reconcile of the spec may
    clear it: a child's event (the progress ConfigMap's creation) must not turn Failed to Pending."""
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    written = state.written.get(key)
    raw = written[1] if written and written[0] == body["metadata"].get("uid", "") else body.get("status")
    for condition in (raw or {}).get("conditions") or []:
        if (condition.get("type"), condition.get("status"), condition.get("reason")) == (
            ConditionType.SPEC_VALID.value, "False", Reason.INVALID_SPEC.value,
        ):
            return SpecProblem(Reason.INVALID_SPEC, condition.get("message") or "")
    return None


# --- entry point ------------------------------------------------------------------------------


def run(namespaces: list[str], kubeconfig: Path | None, liveness: str | None, verbose: bool) -> None:
    global _api_client, _reporter_image
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if not verbose:  # one line per handler call and per probe is noise; failures still show
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    _api_client = kubeclient.load_api_client(kubeconfig)
    _reporter_image = os.environ.get(render.ENV_REPORTER_IMAGE) or render.DEFAULT_REPORTER_IMAGE
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
    )
