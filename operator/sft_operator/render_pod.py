"""The StatefulSet's pod: the trainer container, the reporter and transfer sidecars, env,
resources, placement and volumes (pure: an SFTJob in, a manifest out)."""

from __future__ import annotations

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
    SFTJob,
)
from sft_models.naming import (
    claim_name,
    configmap_name,
    pod_service_account,
    podgroup_name,
    service_name,
    statefulset_name,
)
from sft_operator.render_meta import (
    ANNOTATION_ACCEPTED_SPEC,
    ANNOTATION_DESIRED_HASH,
    COMPONENT_TRAINER,
    COSCHEDULING_POD_GROUP_LABEL,
    DEFAULT_REPORTER_IMAGE,
    HOSTNAME_TOPOLOGY_KEY,
    RDZV_PORT_NAME,
    REPORTER_CONTAINER,
    VOLCANO_GROUP_NAME_ANNOTATION,
    child_labels,
    child_metadata,
    desired_hash,
    gang_of,
    master_addr,
    selector_labels,
)


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
    labels = {**pod.labels, **child_labels(job, COMPONENT_TRAINER)}
    annotations = dict(pod.annotations)
    gang = gang_of(job)
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
    metadata = child_metadata(job, statefulset_name(job), COMPONENT_TRAINER)
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


def _training_over(job: SFTJob) -> bool:
    return job.status is not None and job.status.training_over
