"""What every rendered child shares: the annotations, component labels and constants of our
objects, the job's selector labels, owner reference and metadata, the desired-state digest."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sft_core import contract
from sft_models.models import (
    GangProvider,
    GangScheduling,
    SFTJob,
)
from sft_models.naming import (
    service_name,
    statefulset_name,
)

ANNOTATION_ACCEPTED_SPEC = f"{contract.GROUP}/accepted-spec"
ANNOTATION_DESIRED_HASH = f"{contract.GROUP}/desired-hash"
COMPONENT_TRAINER = "trainer"
COMPONENT_RENDEZVOUS = "rendezvous"
COMPONENT_CONFIG = "config"
COMPONENT_CHECKPOINTS = "checkpoints"
COMPONENT_PROGRESS = "progress"
COMPONENT_REPORTER = "reporter"
REPORTER_CONTAINER = "reporter"
# The reporter runs from the operator's own image (it needs the kubernetes client, not torch);
# the operator learns its image from this env var (the Helm chart sets it).
ENV_REPORTER_IMAGE = "SFT_REPORTER_IMAGE"
DEFAULT_REPORTER_IMAGE = "sft-operator:0.1.0"
COMPONENT_GANG = "gang"
COMPONENT_NETWORK = "network"
RDZV_PORT_NAME = "rdzv"
# Gang scheduling: each provider's PodGroup API (group/version), and how a pod names its group.
# scheduler-plugins apis/scheduling/v1alpha1 (PodGroupLabel = scheduling.GroupName + "/pod-group");
# volcano.sh/apis pkg/apis/scheduling/v1beta1 (KubeGroupNameAnnotationKey).
PODGROUP_KIND = "PodGroup"
PODGROUP_PLURAL = "podgroups"
PODGROUP_API_VERSION: dict[GangProvider, str] = {
    GangProvider.COSCHEDULING: "scheduling.x-k8s.io/v1alpha1",
    GangProvider.VOLCANO: "scheduling.volcano.sh/v1beta1",
}
COSCHEDULING_POD_GROUP_LABEL = "scheduling.x-k8s.io/pod-group"
VOLCANO_GROUP_NAME_ANNOTATION = "scheduling.k8s.io/group-name"
HOSTNAME_TOPOLOGY_KEY = "kubernetes.io/hostname"


# The API's resource names of the kinds the renderers make: the lowercase kind and "s", but for these.
_IRREGULAR_PLURALS = {"NetworkPolicy": "networkpolicies"}


def resource_plural(kind: str) -> str:
    """The resource (as in a URL path or an RBAC rule) of a kind the renderers make."""
    return _IRREGULAR_PLURALS.get(kind, kind.lower() + "s")


def gang_of(job: SFTJob) -> GangScheduling | None:
    return job.spec.scheduling.gang if job.spec.scheduling is not None else None


def master_addr(job: SFTJob) -> str:
    """Pod 0's stable DNS name through the headless Service."""
    return f"{statefulset_name(job)}-0.{service_name(job)}.{job.metadata.namespace}.svc"


# --- shared metadata --------------------------------------------------------------------------


def selector_labels(job: SFTJob) -> dict[str, str]:
    """Labels that select every child (and pod) of one job."""
    return {contract.LABEL_JOB_NAME: job.metadata.name, contract.LABEL_MANAGED_BY: contract.MANAGED_BY}


def child_labels(job: SFTJob, component: str) -> dict[str, str]:
    """A child's labels: the job's selector and what part of the job it is."""
    return {**selector_labels(job), contract.LABEL_COMPONENT: component}


def owner_reference(job: SFTJob) -> dict[str, Any]:
    return {
        "apiVersion": contract.API_VERSION,
        "kind": contract.KIND,
        "name": job.metadata.name,
        "uid": job.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(job: SFTJob, name: str, component: str, owned: bool = True) -> dict[str, Any]:
    """A child's metadata: its name, the job's namespace and labels, the job as its owner (if owned)."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": job.metadata.namespace,
        "labels": child_labels(job, component),
    }
    if owned:
        meta["ownerReferences"] = [owner_reference(job)]
    return meta


def desired_hash(manifest: dict[str, Any]) -> str:
    """A digest of what the operator asked for; equal digests mean nothing to update."""
    data = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()[:16]
