"""Pure manifest builders: an SFTJob in, Kubernetes objects (dicts) out.

Every child carries the job's labels and an owner reference (so deleting the job garbage-collects
it), except the checkpoint claim, which is owned only when the user opted in to deleting it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sft_core import contract
from sft_models import pod_security
from sft_models.models import (
    GPU_RESOURCE,
    KUEUE_QUEUE_LABEL,
    AntiAffinity,
    Device,
    GangProvider,
    GangScheduling,
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


# The API's resource names of the kinds rendered here: the lowercase kind and "s", but for these.
_IRREGULAR_PLURALS = {"NetworkPolicy": "networkpolicies"}


def resource_plural(kind: str) -> str:
    """The resource (as in a URL path or an RBAC rule) of a kind this module renders."""
    return _IRREGULAR_PLURALS.get(kind, kind.lower() + "s")


def _gang(job: SFTJob) -> GangScheduling | None:
    return job.spec.scheduling.gang if job.spec.scheduling is not None else None


def master_addr(job: SFTJob) -> str:
    """Pod 0's stable DNS name through the headless Service."""
    return f"{statefulset_name(job)}-0.{service_name(job)}.{job.metadata.namespace}.svc"


# --- shared metadata --------------------------------------------------------------------------


def selector_labels(job: SFTJob) -> dict[str, str]:
    """Labels that select every child (and pod) of one job."""
    return {contract.LABEL_JOB_NAME: job.metadata.name, contract.LABEL_MANAGED_BY: contract.MANAGED_BY}


def _labels(job: SFTJob, component: str) -> dict[str, str]:
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


def _metadata(job: SFTJob, name: str, component: str, owned: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": job.metadata.namespace,
        "labels": _labels(job, component),
    }
    if owned:
        meta["ownerReferences"] = [owner_reference(job)]
    return meta


def desired_hash(manifest: dict[str, Any]) -> str:
    """A digest of what the operator asked for; equal digests mean nothing to update."""
    data = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()[:16]


# --- children ---------------------------------------------------------------------------------


def render_service(job: SFTJob) -> dict[str, Any]:
    """Headless Service: gives pod 0 the stable DNS name used as the rendezvous endpoint."""
    port = job.spec.rdzv_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, service_name(job), COMPONENT_RENDEZVOUS),
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
        "metadata": _metadata(job, networkpolicy_name(job), COMPONENT_NETWORK),
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
        "metadata": _metadata(job, configmap_name(job), COMPONENT_CONFIG),
        "data": {contract.CONFIG_FILE_NAME: json.dumps(config, indent=2, sort_keys=True) + "\n"},
    }


def render_progress_configmap(job: SFTJob) -> dict[str, Any]:
    """Where the reporter sidecar publishes the progress summary; the operator creates it empty
    and never writes its data (the reporter may only patch it, never create it)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, contract.progress_configmap_name(job.metadata.name), COMPONENT_PROGRESS),
        "data": {},
    }


def render_service_account(job: SFTJob) -> dict[str, Any] | None:
    """The pods' own ServiceAccount, unless the user named one."""
    if job.spec.pod.service_account_name is not None:
        return None
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(job, pod_service_account(job), COMPONENT_REPORTER),
    }


def render_reporter_role(job: SFTJob) -> dict[str, Any]:
    """Least privilege: read and patch this job's progress ConfigMap, nothing else."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(job, reporter_role_name(job), COMPONENT_REPORTER),
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
        "metadata": _metadata(job, reporter_role_name(job), COMPONENT_REPORTER),
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
    metadata = _metadata(job, claim_name(job), COMPONENT_CHECKPOINTS, owned=job.spec.checkpoints.delete_with_job)
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
    gang = _gang(job)
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
        "metadata": _metadata(job, podgroup_name(job), COMPONENT_GANG),
        "spec": spec,
    }


def _env(job: SFTJob) -> list[dict[str, Any]]:
    spec = job.spec
    addr = master_addr(job)
    env: list[dict[str, Any]] = [
        {"name": contract.ENV_NNODES, "value": str(spec.nnodes)},
        {"name": contract.ENV_NPROC_PER_NODE, "value": str(spec.nproc_per_node)},
        {"name": contract.ENV_MASTER_ADDR, "value": addr},
        {"name": contract.ENV_MASTER_PORT, "value": str(spec.rdzv_port)},
        {"name": contract.ENV_RDZV_ENDPOINT, "value": f"{addr}:{spec.rdzv_port}"},
        {"name": contract.ENV_RDZV_ID, "value": job.rdzv_id},
        {"name": contract.ENV_POD_NAME, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
        {"name": contract.ENV_CONFIG_PATH, "value": contract.CONFIG_PATH},
        {"name": contract.ENV_DEVICE, "value": spec.device.value},
        {"name": contract.ENV_POD_STATE_DIR, "value": contract.POD_STATE_MOUNT_PATH},
    ]
    return env + [var.to_api() for var in spec.pod.env]


def _resources(job: SFTJob) -> dict[str, Any]:
    pod = job.spec.pod
    resources = pod.resources.to_api() if pod.resources is not None else {}
    # Quantities as strings: the canonical wire form (and the Python client insists on it).
    resources = {k: {name: str(q) for name, q in v.items()} for k, v in resources.items() if v}
    if job.spec.device is Device.CUDA:
        resources.setdefault("limits", {}).setdefault(GPU_RESOURCE, str(job.spec.nproc_per_node))
    return resources


def _tolerations(job: SFTJob) -> list[dict[str, Any]]:
    if job.spec.pod.tolerations is not None:
        return job.spec.pod.tolerations
    if job.spec.device is Device.CUDA:
        return [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    return []


def _affinity(job: SFTJob) -> dict[str, Any]:
    affinity = dict(job.spec.pod.affinity or {})
    mode = job.spec.pod.anti_affinity
    if mode is AntiAffinity.DISABLED or "podAntiAffinity" in affinity:
        return affinity
    term = {
        "labelSelector": {"matchLabels": {contract.LABEL_JOB_NAME: job.metadata.name}},
        "topologyKey": HOSTNAME_TOPOLOGY_KEY,
    }
    if mode is AntiAffinity.REQUIRED:
        affinity["podAntiAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": [term]}
    else:
        affinity["podAntiAffinity"] = {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": term}]
        }
    return affinity


def _reporter_container(job: SFTJob, image: str) -> dict[str, Any]:
    """The progress reporter sidecar (only pod 0's publishes): reads the volume, read-only.

    On SIGTERM it publishes until the trainer has exited (the launcher's marker in the pod-state
    volume), at most the grace period less a margin, so the trainer's last save reaches the status."""
    return {
        "name": REPORTER_CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "sft_reporter"],
        "env": [
            {
                "name": contract.ENV_POD_NAME,
                "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
            },
            {"name": contract.ENV_CONFIG_PATH, "value": contract.CONFIG_PATH},
            {"name": contract.ENV_POD_STATE_DIR, "value": contract.POD_STATE_MOUNT_PATH},
            {
                "name": contract.ENV_TERMINATION_GRACE_SECONDS,
                "value": str(job.spec.pod.termination_grace_period_seconds),
            },
        ],
        "volumeMounts": [
            {"name": contract.CHECKPOINT_VOLUME, "mountPath": contract.CHECKPOINT_MOUNT_PATH, "readOnly": True},
            {"name": contract.CONFIG_VOLUME, "mountPath": contract.CONFIG_MOUNT_PATH, "readOnly": True},
            {"name": contract.POD_STATE_VOLUME, "mountPath": contract.POD_STATE_MOUNT_PATH, "readOnly": True},
            # The pod's only API credential (the trainer has none).
            pod_security.reporter_token_mount(),
        ],
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": pod_security.container_security_context(read_only_root=True),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


TRANSFER_TMP_MOUNT_PATH = "/tmp"


def _transfer_env(job: SFTJob) -> list[dict[str, Any]]:
    """The transfer sidecar's env: endpoints by value, credentials only by reference to the
    Secrets the spec names (their values never enter a manifest)."""
    remote = job.spec.remote
    hf = remote.hugging_face if remote is not None else None
    s3 = remote.s3 if remote is not None else None
    env: list[dict[str, Any]] = [
        {"name": contract.ENV_POD_NAME, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
        {"name": contract.ENV_CONFIG_PATH, "value": contract.CONFIG_PATH},
        {"name": contract.ENV_TERMINATION_GRACE_SECONDS, "value": str(job.spec.pod.termination_grace_period_seconds)},
        # huggingface_hub's cache and token lookups write under HOME (the root filesystem is read-only).
        {"name": "HOME", "value": TRANSFER_TMP_MOUNT_PATH},
    ]
    if hf is not None and hf.endpoint is not None:
        env.append({"name": contract.ENV_HF_ENDPOINT, "value": hf.endpoint})
    if hf is not None and hf.token_secret is not None:
        env += [
            {"name": contract.ENV_HF_TOKEN_SECRET, "value": hf.token_secret},
            {
                "name": contract.ENV_HF_TOKEN,
                "valueFrom": {"secretKeyRef": {"name": hf.token_secret, "key": contract.ENV_HF_TOKEN}},
            },
        ]
    if s3 is not None and s3.endpoint is not None:
        env.append({"name": contract.ENV_S3_ENDPOINT, "value": s3.endpoint})
    if s3 is not None and s3.region is not None:
        env.append({"name": contract.ENV_S3_REGION, "value": s3.region})
    if s3 is not None and s3.credentials_secret is not None:
        env.append({"name": contract.ENV_S3_SECRET, "value": s3.credentials_secret})
        keys = [(key, False) for key in S3_SECRET_REQUIRED_KEYS] + [(key, True) for key in S3_SECRET_OPTIONAL_KEYS]
        for key, optional in keys:
            if (key == contract.ENV_S3_ENDPOINT and s3.endpoint is not None) or (
                key == contract.ENV_S3_REGION and s3.region is not None
            ):
                continue  # the spec's value is used; one definition per name
            ref: dict[str, Any] = {"name": s3.credentials_secret, "key": key}
            if optional:
                ref["optional"] = True
            env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    return env


S3_SECRET_REQUIRED_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_SECRET_OPTIONAL_KEYS = ("AWS_SESSION_TOKEN", contract.ENV_S3_ENDPOINT, contract.ENV_S3_REGION)


def _source_cache_mount(job: SFTJob, read_only: bool) -> list[dict[str, Any]]:
    remote = job.spec.remote
    if remote is None or remote.cache_claim is None:
        return []  # the cache is on the checkpoint volume
    return [
        {
            "name": contract.SOURCE_CACHE_VOLUME,
            "mountPath": contract.SOURCE_CACHE_CLAIM_MOUNT_PATH,
            "readOnly": read_only,
        }
    ]


def _transfer_container(job: SFTJob) -> dict[str, Any]:
    """The transfer sidecar (trainer image): pod 0's fetches the remote sources once for every
    rank, restores and exports checkpoints; the only container that sees the credentials."""
    return {
        "name": contract.TRANSFER_CONTAINER,
        "image": job.spec.pod.image,
        "imagePullPolicy": job.spec.pod.image_pull_policy,
        "command": ["python", "-m", "sft_trainer.transfer"],
        "env": _transfer_env(job),
        "volumeMounts": [
            {"name": contract.CHECKPOINT_VOLUME, "mountPath": contract.CHECKPOINT_MOUNT_PATH},
            {"name": contract.CONFIG_VOLUME, "mountPath": contract.CONFIG_MOUNT_PATH, "readOnly": True},
            *_source_cache_mount(job, read_only=False),
            {"name": contract.TRANSFER_TMP_VOLUME, "mountPath": TRANSFER_TMP_MOUNT_PATH},
        ],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
        "securityContext": pod_security.container_security_context(read_only_root=True),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _pod_template(job: SFTJob, reporter_image: str) -> dict[str, Any]:
    spec, pod = job.spec, job.spec.pod
    shm: dict[str, Any] = {"medium": "Memory"}
    if pod.shm_size_limit is not None:
        shm["sizeLimit"] = pod.shm_size_limit
    container: dict[str, Any] = {
        "name": contract.TRAINER_CONTAINER,
        "image": pod.image,
        "imagePullPolicy": pod.image_pull_policy,
        "command": ["sft-trainer"],
        "env": _env(job),
        "ports": [{"name": RDZV_PORT_NAME, "containerPort": spec.rdzv_port, "protocol": "TCP"}],
        "volumeMounts": [
            {"name": contract.CHECKPOINT_VOLUME, "mountPath": contract.CHECKPOINT_MOUNT_PATH},
            {"name": contract.CONFIG_VOLUME, "mountPath": contract.CONFIG_MOUNT_PATH, "readOnly": True},
            {"name": contract.SHM_VOLUME, "mountPath": contract.SHM_MOUNT_PATH},
            *(mount.to_api() for mount in pod.volume_mounts),
            {"name": contract.POD_STATE_VOLUME, "mountPath": contract.POD_STATE_MOUNT_PATH},
            *_source_cache_mount(job, read_only=True),
        ],
        # Not readOnlyRootFilesystem: the trainer's caches (HOME=/tmp) are on the root filesystem.
        "securityContext": pod_security.container_security_context(),
        # A crash's last log lines become the termination message the operator reports.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    resources = _resources(job)
    if resources:
        container["resources"] = resources
    transfer = [_transfer_container(job)] if spec.needs_transfer else []
    cache_claim = spec.remote.cache_claim if spec.remote is not None else None
    transfer_volumes: list[dict[str, Any]] = []
    if transfer:
        transfer_volumes.append({"name": contract.TRANSFER_TMP_VOLUME, "emptyDir": {"sizeLimit": "1Gi"}})
    if cache_claim is not None:
        transfer_volumes.append(
            {"name": contract.SOURCE_CACHE_VOLUME, "persistentVolumeClaim": {"claimName": cache_claim}}
        )
    pod_spec: dict[str, Any] = {
        "containers": [container, _reporter_container(job, reporter_image), *transfer],
        "volumes": [
            {"name": contract.CHECKPOINT_VOLUME, "persistentVolumeClaim": {"claimName": claim_name(job)}},
            {"name": contract.CONFIG_VOLUME, "configMap": {"name": configmap_name(job)}},
            {"name": contract.SHM_VOLUME, "emptyDir": shm},
            *(volume.to_api() for volume in pod.volumes),
            # Shared by trainer and reporter: the launcher's trainer-exited marker (a few bytes).
            {"name": contract.POD_STATE_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
            pod_security.reporter_token_volume(),
            *transfer_volumes,
        ],
        "securityContext": pod_security.pod_security_context(pod.fs_group),
        "serviceAccountName": pod_service_account(job),
        # No token in every container: the reporter mounts its own (the trainer runs model code).
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": pod.termination_grace_period_seconds,
        # Service links would add an env var per Service in the namespace to every pod.
        "enableServiceLinks": False,
    }
    optional = {
        "nodeSelector": pod.node_selector or None,
        "tolerations": _tolerations(job) or None,
        "affinity": _affinity(job) or None,
        "priorityClassName": pod.priority_class_name,
        "schedulerName": pod.scheduler_name,
    }
    pod_spec.update({key: value for key, value in optional.items() if value is not None})
    labels = {**pod.labels, **_labels(job, COMPONENT_TRAINER)}
    annotations = dict(pod.annotations)
    gang = _gang(job)
    if gang is not None:
        pod_spec["schedulerName"] = gang.effective_scheduler_name
        if gang.provider is GangProvider.COSCHEDULING:
            labels[COSCHEDULING_POD_GROUP_LABEL] = podgroup_name(job)
        else:
            annotations[VOLCANO_GROUP_NAME_ANNOTATION] = podgroup_name(job)
    metadata: dict[str, Any] = {"labels": labels}
    if annotations:
        metadata["annotations"] = annotations
    return {"metadata": metadata, "spec": pod_spec}


def render_statefulset(job: SFTJob, reporter_image: str = DEFAULT_REPORTER_IMAGE) -> dict[str, Any]:
    """One pod per node; pod ordinal = node rank. Suspended jobs keep the StatefulSet at 0 pods.

    Annotations: the accepted immutable fields (so a later change to them can be refused and
    named), and a digest of the whole manifest (so re-applying the same spec updates nothing).
    """
    metadata = _metadata(job, statefulset_name(job), COMPONENT_TRAINER)
    queue = job.spec.scheduling.queue_name if job.spec.scheduling is not None else None
    if queue is not None:
        # What Kueue's StatefulSet integration reads: the StatefulSet's pods become one Workload
        # (a pod group of `replicas` pods) in this LocalQueue. Kueue labels the pods itself (group
        # name, total count); a group name already on a pod could not be changed by it.
        metadata["labels"][KUEUE_QUEUE_LABEL] = queue
    metadata["annotations"] = {
        ANNOTATION_ACCEPTED_SPEC: json.dumps(job.spec.immutable_view(), sort_keys=True, separators=(",", ":"))
    }
    manifest: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata,
        "spec": {
            "replicas": 0 if job.spec.suspend or _training_over(job) else job.spec.nnodes,
            "serviceName": service_name(job),
            "selector": {"matchLabels": selector_labels(job)},
            # All ranks start together: torchrun's rendezvous waits for every node.
            "podManagementPolicy": "Parallel",
            # A running job is never rolled by a template change; new pods pick it up.
            "updateStrategy": {"type": "OnDelete"},
            "template": _pod_template(job, reporter_image),
        },
    }
    metadata["annotations"][ANNOTATION_DESIRED_HASH] = desired_hash(manifest)
    return manifest


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


def _training_over(job: SFTJob) -> bool:
    return job.status is not None and job.status.training_over


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
