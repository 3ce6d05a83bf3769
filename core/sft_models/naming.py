"""The names of an SFTJob's children and who created its claim: what the operator renders and
the client looks up (both read them here, so they never disagree)."""

from __future__ import annotations

from typing import Any

from sft_core import contract
from sft_models.models import SFTJob

# On a checkpoint claim the operator created: the uid of the job it was created for. Only that
# job may own it (deleteWithJob); a job created again under the same name finds it and keeps it.
ANNOTATION_CREATED_BY = f"{contract.GROUP}/created-by-uid"


def statefulset_name(job: SFTJob) -> str:
    return job.metadata.name


def service_name(job: SFTJob) -> str:
    return job.metadata.name


def configmap_name(job: SFTJob) -> str:
    return f"{job.metadata.name}-config"


def reporter_role_name(job: SFTJob) -> str:
    return f"{job.metadata.name}-reporter"


def pod_service_account(job: SFTJob) -> str:
    """The user's ServiceAccount, else one per job (so the reporter's grant reaches no other pod)."""
    return job.spec.pod.service_account_name or job.metadata.name


def claim_name(job: SFTJob) -> str:
    return job.spec.checkpoints.existing_claim or f"{job.metadata.name}-checkpoints"


def podgroup_name(job: SFTJob) -> str:
    return job.metadata.name


def networkpolicy_name(job: SFTJob) -> str:
    return job.metadata.name


def claim_creator(claim: dict[str, Any]) -> str | None:
    """The uid of the job an operator-created claim was created for (None: not recorded)."""
    return ((claim.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_CREATED_BY)


def created_by(claim: dict[str, Any], job_uid: str) -> bool:
    """Whether the job of ``job_uid`` created the claim: its annotation says so, or (a claim from
    before the annotation) it already owns it. Anything else is another job's: never owned."""
    creator = claim_creator(claim)
    if creator is not None:
        return creator == job_uid
    owners = (claim.get("metadata") or {}).get("ownerReferences") or []
    return any(o.get("kind") == contract.KIND and o.get("uid") == job_uid for o in owners)
