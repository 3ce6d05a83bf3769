"""The children of an SFTJob in the API: the converge policy, over the adapter (kube.KubeApi).

``converge`` creates what is missing and brings what exists to what the job asks, touching an
object only when something differs (re-applying a job writes nothing). A refused change to an
immutable field is reported and the job goes on as created; an object of the same name that is
not the job's is never taken over.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import kopf
import kubernetes
import pydantic
from kubernetes.client.exceptions import ApiException

from sft_core import contract
from sft_models import naming
from sft_models.models import InvalidSpecError, Reason, SFTJob
from sft_operator import render, render_meta, render_pod
from sft_operator.kube import LISTED_KINDS, KubeApi
from sft_operator.spec_checks import SpecProblem, VolumeCheck, check_checkpoint_claim

# A job's children other than its StatefulSet are independent of each other: they are created
# (or, for a job that exists already, read) concurrently, a few requests' latency per job instead
# of one per child. Shared by every handler thread; a task never waits for another.
CHILD_THREADS = 16
_children_pool = ThreadPoolExecutor(max_workers=CHILD_THREADS, thread_name_prefix="sft-children")


class Refused(Exception):
    """The API refused a child as invalid: a spec problem, not worth retrying."""


# How the API server refuses a body: 422 (invalid), 400 (not even decodable as the kind, e.g.
# a number where a pod's env value, a string, belongs).
REFUSALS = (400, 422)


def _create_or_read(kube: KubeApi, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(object, created). An object that already exists (409) is fine: read it."""
    meta = manifest["metadata"]
    try:
        return kube.create(manifest), True
    except ApiException as exc:
        if exc.status in REFUSALS:
            raise Refused(f"{manifest['kind']} {meta['name']}: {_refusal_message(manifest, exc)}") from None
        if exc.status == 404 and manifest["kind"] == render_meta.PODGROUP_KIND:
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
        f"{render_meta.PODGROUP_PLURAL}.{group} is not installed): install {provider}, or remove spec.scheduling.gang"
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
    return "; ".join(
        f"{'.'.join(str(item) for item in error['loc'])}: {error['msg']}" for error in exc.errors(include_url=False)
    )


def _api_message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body or "{}").get("message") or str(exc.reason)
    except ValueError:
        return str(exc.reason)


def ensure_child(
    kube: KubeApi, manifest: dict[str, Any], existing: dict[str, Any] | None, *, observed: bool = False
) -> dict[str, Any]:
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
        hint = (
            " (to use it for checkpoints, set spec.checkpoints.existingClaim)"
            if kind == "PersistentVolumeClaim"
            else ""
        )
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
        want = want_meta["annotations"][render_meta.ANNOTATION_DESIRED_HASH]
        if (meta.get("annotations") or {}).get(render_meta.ANNOTATION_DESIRED_HASH) == want and not owners_differ:
            return existing
        updated["metadata"]["labels"] = want_meta["labels"]
        updated["metadata"]["annotations"] = {**(meta.get("annotations") or {}), **want_meta["annotations"]}
        updated["spec"] = manifest["spec"]
    elif kind == "ConfigMap" and want_meta["labels"].get(contract.LABEL_COMPONENT) != render_meta.COMPONENT_PROGRESS:
        if existing.get("data") == manifest["data"] and not owners_differ:
            return existing
        updated["data"] = manifest["data"]
    elif kind == "Role":
        if existing.get("rules") == manifest["rules"] and not owners_differ:
            return existing
        updated["rules"] = manifest["rules"]
    elif kind == render_meta.PODGROUP_KIND:
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
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: copy.deepcopy(meta[k]) for k in _SUMMARY_METADATA if meta.get(k) is not None},
    }
    progress = (meta.get("labels") or {}).get(contract.LABEL_COMPONENT) == render_meta.COMPONENT_PROGRESS
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

    def find(self, kube: KubeApi, manifest: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
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


def converge(
    kube: KubeApi,
    job: SFTJob,
    statefulset: dict[str, Any] | None,
    *,
    fresh: bool,
    reporter_image: str,
    known: KnownChildren | None = None,
) -> Converged:
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
    waves = [
        [m for m in children if m["kind"] not in ("StatefulSet", "RoleBinding")],
        [m for m in children if m["kind"] == "RoleBinding"],
    ]
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
                statefulset = ensure_child(kube, render_pod.render_statefulset(job, reporter_image), statefulset)
    except Refused as exc:
        return Converged(statefulset, SpecProblem(Reason.INVALID_SPEC, str(exc)), None)
    if job.spec.checkpoints.existing_claim is not None:
        claim = kube.read_claim(namespace, job.spec.checkpoints.existing_claim)
    kept_for = None
    if (
        job.spec.checkpoints.claim is not None
        and job.spec.checkpoints.delete_with_job
        and claim is not None
        and not naming.created_by(claim, job.metadata.uid)
    ):
        kept_for = naming.claim_creator(claim) or "unrecorded"
    return Converged(
        statefulset,
        problem,
        check_checkpoint_claim(job.spec.nnodes, claim, naming.claim_name(job), created_by_other=kept_for),
    )


def _ensure_one(kube: KubeApi, manifest: dict[str, Any], fresh: bool, known: KnownChildren | None) -> dict[str, Any]:
    meta = manifest["metadata"]
    if fresh:
        return ensure_child(kube, manifest, None)
    if known is not None:
        found, existing = known.find(kube, manifest)
        if found:
            return ensure_child(kube, manifest, existing, observed=True)
    existing = kube.read(manifest["kind"], meta["namespace"], meta["name"], manifest["apiVersion"])
    return ensure_child(kube, manifest, existing)


def _ensure_concurrently(
    kube: KubeApi, manifests: list[dict[str, Any]], fresh: bool, known: KnownChildren | None
) -> list[dict[str, Any]]:
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
