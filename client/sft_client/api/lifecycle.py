"""Suspend, resume and delete an SFTJob (thin I/O over the API).

Suspend and resume patch ``spec.suspend``; the operator scales the pods (to 0, after each pod's
on-demand checkpoint; back to ``nnodes``, resuming from the newest full state). Deletion follows
docs/api.md: the job's children go with it (owner references), the checkpoint claim only when the
job owns it (``checkpoints.deleteWithJob: true`` on a claim the operator created). ``keep_checkpoints``
makes sure it stays even then.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sft_client.api.jobs import SFTJobNotFoundError, custom_objects_api, get_job
from sft_core import contract
from sft_models.models import InvalidSpecError, parse_job
from sft_models.naming import claim_name, created_by

# How long delete(keep_checkpoints=True) waits for a running operator to take in
# deleteWithJob=false (status.observedGeneration) before it deletes the job.
OPERATOR_CATCH_UP_SECONDS = 15.0


def _patch_spec(api_client: Any, name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    from kubernetes.client.exceptions import ApiException

    try:
        patched: dict[str, Any] = custom_objects_api(api_client).patch_namespaced_custom_object(
            contract.GROUP, contract.VERSION, namespace, contract.PLURAL, name, {"spec": spec}
        )
        return patched
    except ApiException as exc:
        if exc.status == 404:
            raise SFTJobNotFoundError(f"SFTJob {namespace}/{name} not found") from None
        raise


def suspend_job(api_client: Any, name: str, namespace: str) -> dict[str, Any]:
    """spec.suspend=true: the pods save an on-demand checkpoint and stop. Returns the job."""
    return _patch_spec(api_client, name, namespace, {"suspend": True})


def resume_job(api_client: Any, name: str, namespace: str) -> dict[str, Any]:
    """spec.suspend=false: the pods start again and resume from the newest full state."""
    return _patch_spec(api_client, name, namespace, {"suspend": False})


@dataclass(frozen=True)
class Deletion:
    """What deleting a job did to its checkpoint claim."""

    claim: str | None  # None: the job has no claim (the operator refused its spec before creating one)
    claim_kept: bool
    note: str  # one sentence for people, e.g. "checkpoint claim tiny-checkpoints is kept: ..."


def _checkpoint_claim(job: dict[str, Any]) -> tuple[str | None, bool]:
    """(the claim's name, whether the job owns it: deleteWithJob on a claim the operator creates)."""
    try:
        parsed = parse_job(job)
    except InvalidSpecError:  # the operator created no children for it
        return None, False
    volume = parsed.spec.checkpoints
    return claim_name(parsed), volume.delete_with_job and volume.existing_claim is None


def _claim_created_by(api_client: Any, claim: str, namespace: str, job_uid: str) -> bool:
    """Whether the job created the claim (only then may it own it: naming.created_by); a
    missing claim counts as its own (nothing to keep)."""
    import kubernetes.client
    from kubernetes.client.exceptions import ApiException

    try:
        pvc = kubernetes.client.CoreV1Api(api_client).read_namespaced_persistent_volume_claim(claim, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return created_by(api_client.sanitize_for_serialization(pvc), job_uid)


def _disown_claim(api_client: Any, claim: str, namespace: str, job_uid: str) -> bool:
    """Remove the job's owner reference from the claim, so the garbage collector keeps it.
    A JSON patch that tests the reference it removes: a concurrent change makes it fail and
    retry on a fresh read. Returns whether a reference was removed."""
    import kubernetes.client
    from kubernetes.client.exceptions import ApiException

    core = kubernetes.client.CoreV1Api(api_client)
    for _attempt in range(5):
        try:
            pvc = core.read_namespaced_persistent_volume_claim(claim, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        owners = (pvc.metadata.owner_references if pvc.metadata is not None else None) or []
        index = next((i for i, owner in enumerate(owners) if owner.uid == job_uid), None)
        if index is None:
            return False
        patch = [
            {"op": "test", "path": f"/metadata/ownerReferences/{index}/uid", "value": job_uid},
            {"op": "remove", "path": f"/metadata/ownerReferences/{index}"},
        ]
        try:
            core.patch_namespaced_persistent_volume_claim(claim, namespace, patch)
            return True
        except ApiException as exc:
            if exc.status not in (409, 422):  # 422: the test failed (the list changed meanwhile)
                raise
    raise RuntimeError(f"could not remove SFTJob's owner reference from claim {namespace}/{claim}: it keeps changing")


def _wait_for_operator(api_client: Any, name: str, namespace: str, generation: int) -> None:
    """Until the operator's status says it has seen ``generation`` (bounded: no operator running
    means nobody re-adds the owner reference either)."""
    deadline = time.monotonic() + OPERATOR_CATCH_UP_SECONDS
    while time.monotonic() < deadline:
        observed = (get_job(api_client, name, namespace).get("status") or {}).get("observedGeneration") or 0
        if observed >= generation:
            return
        time.sleep(0.5)


def delete_job(api_client: Any, name: str, namespace: str, *, keep_checkpoints: bool = False) -> Deletion:
    """Delete the job (its pods, StatefulSet, Service, ConfigMaps go with it) and say what happens
    to the checkpoint claim. ``keep_checkpoints``: a claim the job owns is kept too: first
    ``deleteWithJob`` is set to false (so the operator stops owning it), then the job's owner
    reference is removed from the claim, then the job is deleted."""
    import kubernetes.client
    from kubernetes.client.exceptions import ApiException

    job = get_job(api_client, name, namespace)
    uid = job["metadata"]["uid"]
    claim, owned = _checkpoint_claim(job)
    if claim is None:
        deletion = Deletion(None, False, "the job has no checkpoint claim")
    elif not owned:
        why = (
            "an existing claim is never deleted with a job"
            if claim == job["spec"]["checkpoints"].get("existingClaim")
            else "checkpoints.deleteWithJob is false"
        )
        deletion = Deletion(claim, True, f"checkpoint claim {claim} is kept ({why})")
    elif not _claim_created_by(api_client, claim, namespace, uid):
        deletion = Deletion(
            claim,
            True,
            f"checkpoint claim {claim} is kept (another SFTJob created it: "
            "checkpoints.deleteWithJob applies only to a claim the job created)",
        )
    elif not keep_checkpoints:
        deletion = Deletion(
            claim, False, f"checkpoint claim {claim} is deleted with the job (checkpoints.deleteWithJob is true)"
        )
    else:
        patched = _patch_spec(api_client, name, namespace, {"checkpoints": {"deleteWithJob": False}})
        _disown_claim(api_client, claim, namespace, uid)
        _wait_for_operator(api_client, name, namespace, patched["metadata"]["generation"])
        _disown_claim(api_client, claim, namespace, uid)  # in case the operator re-added it meanwhile
        deletion = Deletion(
            claim,
            True,
            f"checkpoint claim {claim} is kept: set checkpoints.deleteWithJob to false and removed the "
            "claim's owner reference to the job before deleting it",
        )
    try:
        custom_objects_api(api_client).delete_namespaced_custom_object(
            contract.GROUP,
            contract.VERSION,
            namespace,
            contract.PLURAL,
            name,
            body=kubernetes.client.V1DeleteOptions(
                propagation_policy="Background", preconditions=kubernetes.client.V1Preconditions(uid=uid)
            ),
        )
    except ApiException as exc:
        if exc.status == 404:
            raise SFTJobNotFoundError(f"SFTJob {namespace}/{name} not found") from None
        raise
    return deletion
