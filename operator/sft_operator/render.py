"""Pure manifest builders: an SFTJob in, Kubernetes objects (dicts) out.

Every child carries the job's labels and an owner reference (so deleting the job garbage-collects
it), except the checkpoint claim, which is owned only when the user opted in to deleting it.
"""

from __future__ import annotations

import json
from typing import Any

from sft_core import contract
from sft_models.models import (
    GangProvider,
    SFTJob,
    parse_spec,
)
from sft_models.naming import (
    ANNOTATION_CREATED_BY,
    claim_name,
    configmap_name,
    created_by,
    networkpolicy_name,
    pod_service_account,
    podgroup_name,
    reporter_role_name,
    service_name,
)
from sft_operator.render_meta import (
    ANNOTATION_ACCEPTED_SPEC,
    COMPONENT_CHECKPOINTS,
    COMPONENT_CONFIG,
    COMPONENT_GANG,
    COMPONENT_NETWORK,
    COMPONENT_PROGRESS,
    COMPONENT_RENDEZVOUS,
    COMPONENT_REPORTER,
    DEFAULT_REPORTER_IMAGE,
    PODGROUP_API_VERSION,
    PODGROUP_KIND,
    RDZV_PORT_NAME,
    child_metadata,
    gang_of,
    selector_labels,
)
from sft_operator.render_pod import render_statefulset

# --- children ---------------------------------------------------------------------------------


def render_service(job: SFTJob) -> dict[str, Any]:
    """Headless Service: gives pod 0 the stable DNS name used as the rendezvous endpoint."""
    port = job.spec.rdzv_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(job, service_name(job), COMPONENT_RENDEZVOUS),
        "spec": {
            "clusterIP": "None",
            # Rendezvous happens before any pod is Ready.
            "publishNotReadyAddresses": True,
            "selector": selector_labels(job),
            "ports": [{"name": RDZV_PORT_NAME, "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }


def render_networkpolicy(job: SFTJob) -> dict[str, Any]:
    """Only the job's own pods may connect to its pods (same namespace, the job's labels), on
    every port: the rendezvous and c10d store (whose values torch unpickles) and the ports NCCL
    and gloo open between ranks, which are not known in advance. Nothing else listens in the pod
    (the reporter pushes through the API server). Egress is left open: the pods download models
    and data, resolve names and reach the API server (the reporter) and experiment trackers, and
    which of those a cluster allows is its own egress policy's to say."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_metadata(job, networkpolicy_name(job), COMPONENT_NETWORK),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(job)},
            "policyTypes": ["Ingress"],
            # No ports: all of them; no namespaceSelector: this namespace only.
            "ingress": [{"from": [{"podSelector": {"matchLabels": selector_labels(job)}}]}],
        },
    }


def render_configmap(job: SFTJob) -> dict[str, Any]:
    config = job.spec.training_config(job.metadata.name, job.metadata.namespace, job.metadata.uid)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(job, configmap_name(job), COMPONENT_CONFIG),
        "data": {contract.CONFIG_FILE_NAME: json.dumps(config, indent=2, sort_keys=True) + "\n"},
    }


def render_progress_configmap(job: SFTJob) -> dict[str, Any]:
    """Where the reporter sidecar publishes the progress summary; the operator creates it empty
    and never writes its data (the reporter may only patch it, never create it)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(job, contract.progress_configmap_name(job.metadata.name), COMPONENT_PROGRESS),
        "data": {},
    }


def render_service_account(job: SFTJob) -> dict[str, Any] | None:
    """The pods' own ServiceAccount, unless the user named one."""
    if job.spec.pod.service_account_name is not None:
        return None
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": child_metadata(job, pod_service_account(job), COMPONENT_REPORTER),
    }


def render_reporter_role(job: SFTJob) -> dict[str, Any]:
    """Least privilege: read and patch this job's progress ConfigMap, nothing else."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": child_metadata(job, reporter_role_name(job), COMPONENT_REPORTER),
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [contract.progress_configmap_name(job.metadata.name)],
                "verbs": ["get", "patch"],
            }
        ],
    }


def render_reporter_role_binding(job: SFTJob) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": child_metadata(job, reporter_role_name(job), COMPONENT_REPORTER),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": reporter_role_name(job)},
        "subjects": [{"kind": "ServiceAccount", "name": pod_service_account(job), "namespace": job.metadata.namespace}],
    }


def render_checkpoint_claim(job: SFTJob) -> dict[str, Any] | None:
    """The claim to create, or None when the job uses an existing claim.

    Owned by the job (so garbage-collected with it) only when spec.checkpoints.deleteWithJob.
    """
    claim = job.spec.checkpoints.claim
    if claim is None:
        return None
    spec: dict[str, Any] = {
        "accessModes": job.spec.checkpoint_access_modes(),
        "resources": {"requests": {"storage": claim.size}},
    }
    if claim.storage_class_name is not None:
        spec["storageClassName"] = claim.storage_class_name
    metadata = child_metadata(job, claim_name(job), COMPONENT_CHECKPOINTS, owned=job.spec.checkpoints.delete_with_job)
    metadata["annotations"] = {ANNOTATION_CREATED_BY: job.metadata.uid}
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata, "spec": spec}


def claim_owner_references(manifest: dict[str, Any], existing: dict[str, Any]) -> list[dict[str, Any]]:
    """The SFTJob owner references an existing checkpoint claim should carry: the rendered ones
    (this job's, with deleteWithJob) on a claim this job created; on another job's claim, what it
    has (a job never takes a claim it did not create, so deleting the job never deletes it)."""
    if created_by(existing, manifest["metadata"]["annotations"][ANNOTATION_CREATED_BY]):
        references: list[dict[str, Any]] = manifest["metadata"].get("ownerReferences", [])
        return references
    return [o for o in (existing.get("metadata") or {}).get("ownerReferences") or [] if o.get("kind") == contract.KIND]


def render_podgroup(job: SFTJob) -> dict[str, Any] | None:
    """The gang's PodGroup (spec.scheduling.gang), or None: all nnodes pods or none of them."""
    gang = gang_of(job)
    if gang is None:
        return None
    spec: dict[str, Any] = {"minMember": job.spec.nnodes}
    if gang.provider is GangProvider.COSCHEDULING and gang.schedule_timeout_seconds is not None:
        spec["scheduleTimeoutSeconds"] = gang.schedule_timeout_seconds
    if gang.provider is GangProvider.VOLCANO and gang.queue is not None:
        spec["queue"] = gang.queue
    return {
        "apiVersion": PODGROUP_API_VERSION[gang.provider],
        "kind": PODGROUP_KIND,
        "metadata": child_metadata(job, podgroup_name(job), COMPONENT_GANG),
        "spec": spec,
    }


def render_children(job: SFTJob, reporter_image: str = DEFAULT_REPORTER_IMAGE) -> list[dict[str, Any]]:
    """Everything one job needs, in creation order (claim, config, identity, network policy and
    the gang's PodGroup before the pods: a pod the scheduler sees before its group is not held
    back, and no pod is ever reachable from outside the job)."""
    optional = [render_checkpoint_claim(job), render_service_account(job)]
    podgroup = render_podgroup(job)
    return [
        *(manifest for manifest in optional if manifest is not None),
        render_configmap(job),
        render_progress_configmap(job),
        render_reporter_role(job),
        render_reporter_role_binding(job),
        render_service(job),
        render_networkpolicy(job),
        *([podgroup] if podgroup is not None else []),
        render_statefulset(job, reporter_image),
    ]


def accepted_spec(statefulset: dict[str, Any]) -> dict[str, Any] | None:
    """The immutable fields a running job was created with, read back from its StatefulSet."""
    raw = ((statefulset.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_ACCEPTED_SPEC)
    return json.loads(raw) if raw else None


def immutable_changes(job: SFTJob, statefulset: dict[str, Any]) -> list[tuple[str, str]]:
    """(spec path, message) for each immutable field that differs from what the job was created
    with; empty when nothing changed or the StatefulSet predates the annotation."""
    accepted = accepted_spec(statefulset)
    if accepted is None:
        return []
    changes = []
    for path, value in job.spec.immutable_view().items():
        if path in accepted and accepted[path] != value:
            changes.append(
                (
                    f"spec.{path}",
                    f"immutable once the job is created: it runs with {json.dumps(accepted[path])}, the spec asks "
                    f"for {json.dumps(value)} (revert the field, or create a new job)",
                )
            )
    return changes


def job_as_accepted(job: SFTJob, statefulset: dict[str, Any]) -> SFTJob:
    """The job with every immutable field as the StatefulSet was created with: what a job with a
    refused change runs with. Its mutable fields (suspend, pod settings, maxRestarts) still apply,
    and a finished job still scales to 0."""
    accepted = accepted_spec(statefulset)
    if not accepted:
        return job
    spec = job.spec.to_api()
    for path, value in accepted.items():
        *parents, leaf = path.split(".")
        holder: dict[str, Any] | None = spec
        for part in parents:
            if holder is None:
                break
            if value is None:  # removing: never create a parent (scheduling: {} is not unset)
                holder = holder.get(part)
            else:
                holder = holder.setdefault(part, {})
        if holder is None:
            continue
        if value is None:
            holder.pop(leaf, None)
        else:
            holder[leaf] = value
    return job.model_copy(update={"spec": parse_spec(spec)})
