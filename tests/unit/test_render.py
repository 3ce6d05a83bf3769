"""render.py: exact manifests for a CPU job and a GPU job."""

from __future__ import annotations

import json
from typing import Any

import pytest

from devtools.tiny_model import tiny_job_spec
from sft_models.models import InvalidSpecError, Phase, SFTJob, SFTJobStatus, parse_job
from sft_operator.render import (
    ANNOTATION_ACCEPTED_SPEC,
    immutable_changes,
    job_as_accepted,
    render_checkpoint_claim,
    render_children,
    render_configmap,
    render_networkpolicy,
    render_podgroup,
    render_progress_configmap,
    render_reporter_role,
    render_reporter_role_binding,
    render_service,
    render_service_account,
    render_statefulset,
)
from sft_operator.render_meta import ANNOTATION_DESIRED_HASH

LABELS = {"finetune.dev/job-name": "tiny", "app.kubernetes.io/managed-by": "sft-operator"}
OWNER = {
    "apiVersion": "finetune.dev/v1alpha1",
    "kind": "SFTJob",
    "name": "tiny",
    "uid": "uid-1",
    "controller": True,
    "blockOwnerDeletion": True,
}


def job(**spec_overrides: Any) -> SFTJob:
    spec = tiny_job_spec(**{"checkpoints": {"claim": {"size": "1Gi", "storageClassName": "local"}}, **spec_overrides})
    return parse_job({"metadata": {"name": "tiny", "namespace": "ns", "uid": "uid-1"}, "spec": spec})


def test_service() -> None:
    assert render_service(job()) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "tiny",
            "namespace": "ns",
            "labels": {**LABELS, "finetune.dev/component": "rendezvous"},
            "ownerReferences": [OWNER],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": LABELS,
            "ports": [{"name": "rdzv", "port": 29500, "targetPort": 29500, "protocol": "TCP"}],
        },
    }


def test_networkpolicy_admits_only_the_jobs_own_pods_on_every_port() -> None:
    assert render_networkpolicy(job()) == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": "tiny",
            "namespace": "ns",
            "labels": {**LABELS, "finetune.dev/component": "network"},
            "ownerReferences": [OWNER],
        },
        "spec": {
            "podSelector": {"matchLabels": LABELS},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": LABELS}}]}],
        },
    }
    # The rendezvous port does not narrow it: NCCL and gloo open their own ports between ranks.
    other_port = render_networkpolicy(job(rdzvPort=31000))
    assert other_port["spec"] == render_networkpolicy(job())["spec"]


def test_pod_fs_group_is_configurable_and_never_root() -> None:
    pod = render_statefulset(job(pod={"fsGroup": 1001}))["spec"]["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == 1001
    assert pod["securityContext"]["runAsGroup"] == 65532  # the processes' own group stays
    for bad in (0, -1, "x"):
        with pytest.raises(InvalidSpecError) as refused:
            job(pod={"fsGroup": bad})
        assert [path for path, _ in refused.value.problems] == ["spec.pod.fsGroup"]


@pytest.mark.parametrize(
    "key, value",
    [
        ("container.apparmor.security.beta.kubernetes.io/trainer", "unconfined"),
        ("seccomp.security.alpha.kubernetes.io/pod", "unconfined"),
        ("container.seccomp.security.alpha.kubernetes.io/reporter", "unconfined"),
    ],
)
def test_pod_annotations_cannot_lift_the_confinement(key: str, value: str) -> None:
    with pytest.raises(InvalidSpecError) as refused:
        job(pod={"annotations": {key: value, "note": "x"}})
    assert refused.value.problems == [
        (
            f"spec.pod.annotations[{key}]",
            "'unconfined' would lift the pods' confinement: only runtime/default "
            "or a localhost/ profile (the pods run the restricted profile)",
        )
    ]
    # A profile that confines is passed on as given.
    for confined in ("runtime/default", "localhost/trainer-profile"):
        pod = render_statefulset(job(pod={"annotations": {key: confined}}))["spec"]["template"]
        assert pod["metadata"]["annotations"] == {key: confined}


def test_user_security_context_is_refused_by_field() -> None:
    """The pods' securityContext is the operator's: spec.pod takes no securityContext of its
    own (which would otherwise be a way around the restricted settings)."""
    for field in ("securityContext", "hostNetwork", "hostPID"):
        with pytest.raises(InvalidSpecError) as refused:
            job(pod={field: {"runAsUser": 0} if field == "securityContext" else True})
        assert [path for path, _ in refused.value.problems] == [f"spec.pod.{field}"]


def test_reporter_token_volume_name_is_reserved() -> None:
    with pytest.raises(InvalidSpecError) as refused:
        job(pod={"volumes": [{"name": "reporter-token", "emptyDir": {}}]})
    assert refused.value.problems == [("spec.pod.volumes[0].name", "reporter-token is reserved by the operator")]


def test_configmap() -> None:
    cm = render_configmap(job())
    assert cm["metadata"] == {
        "name": "tiny-config",
        "namespace": "ns",
        "labels": {**LABELS, "finetune.dev/component": "config"},
        "ownerReferences": [OWNER],
    }
    assert list(cm["data"]) == ["training.json"]
    assert json.loads(cm["data"]["training.json"]) == {
        "jobUid": "uid-1",
        "jobName": "tiny",
        "namespace": "ns",
        "numEpochs": 2,
        "fullStateRetention": None,
        # What the checkpoint directory's owner record hashes: the training fields, defaults
        # included; not the placement (checkpoints, rdzvPort, retention, scheduling).
        "trainingFields": {
            "modelPath": "/models/tiny",
            "dataPath": "/data/train.jsonl",
            "dataOutputDir": None,
            "numEpochs": 2,
            "effectiveBatchSize": 4,
            "learningRate": 1e-4,
            "maxSeqLen": 128,
            "maxTokensPerGpu": None,
            "warmupSteps": 0,
            "saveSamples": 0,
            "checkpointAtEpoch": True,
            "accelerateFullStateAtEpoch": True,
            "beta1": 0.9,
            "beta2": 0.95,
            "eps": 1e-8,
            "weightDecay": 0.0,
            "isPretraining": False,
            "blockSize": None,
            "documentColumnName": None,
            "validationSplit": 0.0,
            "validationFrequency": None,
            "extraArgs": {},
            "nnodes": 2,
            "nprocPerNode": 1,
            "device": "cpu",
        },
        "adoptExistingCheckpoints": False,
        "trainingArgs": {
            "model_path": "/models/tiny",
            "data_path": "/data/train.jsonl",
            "ckpt_output_dir": "/checkpoints",
            "data_output_dir": "/checkpoints/data",
            "num_epochs": 2,
            "effective_batch_size": 4,
            "learning_rate": 1e-4,
            "max_seq_len": 128,
            "max_batch_len": 128,
            "warmup_steps": 0,
            "save_samples": 0,
            "checkpoint_at_epoch": True,
            "accelerate_full_state_at_epoch": True,
            "adamw_betas": [0.9, 0.95],
            "adamw_eps": 1e-8,
            "adamw_weight_decay": 0.0,
            "validation_split": 0.0,
            "fsdp_options": {"sharding_strategy": "FULL_SHARD"},
        },
    }


def test_claim_is_not_owned_unless_asked() -> None:
    assert render_checkpoint_claim(job()) == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": "tiny-checkpoints",
            "namespace": "ns",
            "labels": {**LABELS, "finetune.dev/component": "checkpoints"},
            # who created it: only that job may ever own it (deleteWithJob)
            "annotations": {"finetune.dev/created-by-uid": "uid-1"},
        },
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": "1Gi"}},
            "storageClassName": "local",
        },
    }
    owned = render_checkpoint_claim(job(checkpoints={"claim": {"size": "1Gi"}, "deleteWithJob": True}))
    assert owned is not None and owned["metadata"]["ownerReferences"] == [OWNER]
    assert render_checkpoint_claim(job(checkpoints={"existingClaim": "mine"})) is None


def test_statefulset_cpu() -> None:
    sts = render_statefulset(job())
    annotations = sts["metadata"].pop("annotations")
    assert json.loads(annotations[ANNOTATION_ACCEPTED_SPEC])["nnodes"] == 2
    assert len(annotations[ANNOTATION_DESIRED_HASH]) == 16
    assert sts == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": "tiny",
            "namespace": "ns",
            "labels": {**LABELS, "finetune.dev/component": "trainer"},
            "ownerReferences": [OWNER],
        },
        "spec": {
            "replicas": 2,
            "serviceName": "tiny",
            "selector": {"matchLabels": LABELS},
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "OnDelete"},
            "template": {
                "metadata": {"labels": {**LABELS, "finetune.dev/component": "trainer"}},
                "spec": {
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "sft-trainer:0.1.0",
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["sft-trainer"],
                            "env": [
                                {"name": "PET_NNODES", "value": "2"},
                                {"name": "PET_NPROC_PER_NODE", "value": "1"},
                                {"name": "PET_MASTER_ADDR", "value": "tiny-0.tiny.ns.svc"},
                                {"name": "PET_MASTER_PORT", "value": "29500"},
                                {"name": "PET_RDZV_ENDPOINT", "value": "tiny-0.tiny.ns.svc:29500"},
                                {"name": "PET_RDZV_ID", "value": "uid-1"},
                                {
                                    "name": "SFT_POD_NAME",
                                    "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
                                },
                                {"name": "SFT_CONFIG", "value": "/etc/sft/training.json"},
                                {"name": "SFT_DEVICE", "value": "cpu"},
                                {"name": "SFT_POD_STATE_DIR", "value": "/run/sft-operator"},
                            ],
                            "ports": [{"name": "rdzv", "containerPort": 29500, "protocol": "TCP"}],
                            "volumeMounts": [
                                {"name": "checkpoints", "mountPath": "/checkpoints"},
                                {"name": "training-config", "mountPath": "/etc/sft", "readOnly": True},
                                {"name": "dshm", "mountPath": "/dev/shm"},
                                {"name": "pod-state", "mountPath": "/run/sft-operator"},
                            ],
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                                "runAsNonRoot": True,
                                "seccompProfile": {"type": "RuntimeDefault"},
                            },
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                        },
                        {
                            "name": "reporter",
                            "image": "sft-operator:0.1.0",
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["python", "-m", "sft_reporter"],
                            "env": [
                                {
                                    "name": "SFT_POD_NAME",
                                    "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
                                },
                                {"name": "SFT_CONFIG", "value": "/etc/sft/training.json"},
                                {"name": "SFT_POD_STATE_DIR", "value": "/run/sft-operator"},
                                {"name": "SFT_TERMINATION_GRACE_SECONDS", "value": "1800"},
                            ],
                            "volumeMounts": [
                                {"name": "checkpoints", "mountPath": "/checkpoints", "readOnly": True},
                                {"name": "training-config", "mountPath": "/etc/sft", "readOnly": True},
                                {"name": "pod-state", "mountPath": "/run/sft-operator", "readOnly": True},
                                {
                                    "name": "reporter-token",
                                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                                    "readOnly": True,
                                },
                            ],
                            "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                                "runAsNonRoot": True,
                                "seccompProfile": {"type": "RuntimeDefault"},
                                "readOnlyRootFilesystem": True,
                            },
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                        },
                    ],
                    "volumes": [
                        {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "tiny-checkpoints"}},
                        {"name": "training-config", "configMap": {"name": "tiny-config"}},
                        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
                        {"name": "pod-state", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
                        {
                            "name": "reporter-token",
                            "projected": {
                                "sources": [
                                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
                                    {
                                        "configMap": {
                                            "name": "kube-root-ca.crt",
                                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                                        }
                                    },
                                    {
                                        "downwardAPI": {
                                            "items": [
                                                {
                                                    "path": "namespace",
                                                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                                                }
                                            ]
                                        }
                                    },
                                ]
                            },
                        },
                    ],
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "fsGroup": 65532,
                        "fsGroupChangePolicy": "OnRootMismatch",
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "serviceAccountName": "tiny",
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 1800,
                    "enableServiceLinks": False,
                    "affinity": {
                        "podAntiAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "weight": 100,
                                    "podAffinityTerm": {
                                        "labelSelector": {"matchLabels": {"finetune.dev/job-name": "tiny"}},
                                        "topologyKey": "kubernetes.io/hostname",
                                    },
                                }
                            ]
                        }
                    },
                },
            },
        },
    }


def test_statefulset_gpu_defaults_and_user_pod_settings() -> None:
    sts = render_statefulset(
        job(
            device="cuda",
            nprocPerNode=8,
            effectiveBatchSize=64,
            rdzvId="fixed",
            checkpoints={"existingClaim": "shared"},
            pod={
                "image": "trainer:v2",
                "resources": {"requests": {"cpu": 16}, "limits": {"memory": "200Gi"}},
                "nodeSelector": {"gpu": "h100"},
                "antiAffinity": "Required",
                "priorityClassName": "high",
                "schedulerName": "volcano",
                "serviceAccountName": "trainer",
                "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "t"}}}],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
                "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}],
                "labels": {"team": "a", "finetune.dev/job-name": "spoof"},
                "annotations": {"note": "x"},
                "shmSizeLimit": "64Gi",
                "terminationGracePeriodSeconds": 600,
            },
        )
    )
    template = sts["spec"]["template"]
    pod = template["spec"]
    container = pod["containers"][0]
    assert template["metadata"] == {
        "labels": {"team": "a", **LABELS, "finetune.dev/component": "trainer"},
        "annotations": {"note": "x"},
    }
    assert container["image"] == "trainer:v2"
    assert container["resources"] == {
        "requests": {"cpu": "16"},
        "limits": {"memory": "200Gi", "nvidia.com/gpu": "8"},
    }
    assert container["env"][5] == {"name": "PET_RDZV_ID", "value": "fixed"}
    assert container["env"][8:] == [
        {"name": "SFT_DEVICE", "value": "cuda"},
        {"name": "SFT_POD_STATE_DIR", "value": "/run/sft-operator"},
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "t"}}},
    ]
    assert container["volumeMounts"][3] == {"name": "data", "mountPath": "/data", "readOnly": True}
    assert pod["volumes"][0] == {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "shared"}}
    assert pod["volumes"][2] == {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}}
    assert pod["volumes"][3] == {"name": "data", "persistentVolumeClaim": {"claimName": "data"}}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["affinity"] == {
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {"matchLabels": {"finetune.dev/job-name": "tiny"}},
                    "topologyKey": "kubernetes.io/hostname",
                }
            ]
        }
    }
    assert (pod["nodeSelector"], pod["priorityClassName"], pod["schedulerName"], pod["serviceAccountName"]) == (
        {"gpu": "h100"},
        "high",
        "volcano",
        "trainer",
    )
    assert pod["terminationGracePeriodSeconds"] == 600
    # The reporter's bound on waiting for the trainer's last save follows the grace period.
    assert pod["containers"][1]["env"][3] == {"name": "SFT_TERMINATION_GRACE_SECONDS", "value": "600"}
    assert pod["volumes"][4] == {"name": "pod-state", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}


def test_user_gpu_limit_and_affinity_win() -> None:
    user_affinity = {"podAntiAffinity": {"x": 1}, "nodeAffinity": {"y": 2}}
    sts = render_statefulset(
        job(
            device="cuda",
            nprocPerNode=4,
            effectiveBatchSize=8,
            pod={"resources": {"limits": {"nvidia.com/gpu": 4}}, "affinity": user_affinity, "tolerations": []},
        )
    )
    pod = sts["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": "4"}}
    assert pod["affinity"] == user_affinity
    assert "tolerations" not in pod
    disabled = render_statefulset(job(pod={"antiAffinity": "Disabled"}))["spec"]["template"]["spec"]
    assert "affinity" not in disabled


def test_suspend_scales_to_zero_and_changes_the_hash() -> None:
    running, suspended = render_statefulset(job()), render_statefulset(job(suspend=True))
    assert suspended["spec"]["replicas"] == 0
    assert (
        running["metadata"]["annotations"][ANNOTATION_DESIRED_HASH]
        != suspended["metadata"]["annotations"][ANNOTATION_DESIRED_HASH]
    )
    assert render_statefulset(job()) == running  # pure: same input, same output


def test_children_in_creation_order() -> None:
    names = [(c["kind"], c["metadata"]["name"]) for c in render_children(job())]
    assert names == [
        ("PersistentVolumeClaim", "tiny-checkpoints"),
        ("ServiceAccount", "tiny"),
        ("ConfigMap", "tiny-config"),
        ("ConfigMap", "tiny-progress"),
        ("Role", "tiny-reporter"),
        ("RoleBinding", "tiny-reporter"),
        ("Service", "tiny"),
        ("NetworkPolicy", "tiny"),
        ("StatefulSet", "tiny"),
    ]
    assert [
        (c["kind"], c["metadata"]["name"]) for c in render_children(job(checkpoints={"existingClaim": "c"}))
    ] == names[1:]


def test_reporter_may_patch_only_its_own_progress_configmap() -> None:
    role = render_reporter_role(job())
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["tiny-progress"], "verbs": ["get", "patch"]}
    ]
    binding = render_reporter_role_binding(job())
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tiny-reporter"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "tiny", "namespace": "ns"}]
    # A user's own ServiceAccount: bound to the same narrow Role, and no ServiceAccount of ours.
    own = job(pod={"serviceAccountName": "trainers"})
    assert render_service_account(own) is None
    assert render_reporter_role_binding(own)["subjects"] == [
        {"kind": "ServiceAccount", "name": "trainers", "namespace": "ns"}
    ]
    assert render_statefulset(own)["spec"]["template"]["spec"]["serviceAccountName"] == "trainers"


def test_progress_configmap_is_created_empty() -> None:
    assert render_progress_configmap(job()) == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "tiny-progress",
            "namespace": "ns",
            "labels": {**LABELS, "finetune.dev/component": "progress"},
            "ownerReferences": [OWNER],
        },
        "data": {},
    }


def test_finished_job_stays_at_zero_pods() -> None:
    over = job()
    over.status = SFTJobStatus(phase=Phase.SUCCEEDED)
    assert render_statefulset(over)["spec"]["replicas"] == 0
    failed_spec = job()
    failed_spec.status = SFTJobStatus(phase=Phase.FAILED)  # an InvalidSpec failure is not the end
    assert render_statefulset(failed_spec)["spec"]["replicas"] == 2


def test_immutable_changes_name_the_fields() -> None:
    sts = render_statefulset(job())
    assert immutable_changes(job(suspend=True, pod={"image": "other"}), sts) == []
    changes = immutable_changes(job(numEpochs=3, nnodes=1), sts)
    assert changes == [
        (
            "spec.numEpochs",
            "immutable once the job is created: it runs with 2, the spec asks for 3 (revert the field, or create a new job)",
        ),
        (
            "spec.nnodes",
            "immutable once the job is created: it runs with 2, the spec asks for 1 (revert the field, or create a new job)",
        ),
    ]


def test_a_job_with_a_refused_change_runs_as_accepted() -> None:
    """Immutable fields come back as the StatefulSet was created; mutable ones (suspend, pod
    settings) still apply, so a refused change never pins the pods."""
    sts = render_statefulset(job())
    edited = job(numEpochs=3, nnodes=1, suspend=True, pod={"image": "other"})
    runs = job_as_accepted(edited, sts)
    assert runs.spec.immutable_view() == job().spec.immutable_view()
    assert (runs.spec.suspend, runs.spec.pod.image) == (True, "other")
    assert immutable_changes(runs, sts) == []
    rendered = render_statefulset(runs)
    assert rendered["spec"]["replicas"] == 0  # suspended with the change still pending
    assert (
        rendered["metadata"]["annotations"][ANNOTATION_ACCEPTED_SPEC]
        == sts["metadata"]["annotations"][ANNOTATION_ACCEPTED_SPEC]
    )
    assert job_as_accepted(job(), sts) == job()


# --- gang scheduling (spec.scheduling.gang) ---------------------------------------------------


def test_podgroup_for_coscheduling() -> None:
    gang = job(scheduling={"gang": {"provider": "coscheduling", "scheduleTimeoutSeconds": 300}})
    assert render_podgroup(gang) == {
        "apiVersion": "scheduling.x-k8s.io/v1alpha1",
        "kind": "PodGroup",
        "metadata": {
            "name": "tiny",
            "namespace": "ns",
            "labels": {**LABELS, "finetune.dev/component": "gang"},
            "ownerReferences": [OWNER],
        },
        "spec": {"minMember": 2, "scheduleTimeoutSeconds": 300},
    }
    template = render_statefulset(gang)["spec"]["template"]
    assert template["metadata"] == {
        "labels": {**LABELS, "finetune.dev/component": "trainer", "scheduling.x-k8s.io/pod-group": "tiny"}
    }
    assert template["spec"]["schedulerName"] == "scheduler-plugins-scheduler"
    # Without a timeout the plugin's own default applies; the scheduler name can be overridden.
    own = job(scheduling={"gang": {"provider": "coscheduling", "schedulerName": "my-sched"}})
    assert render_podgroup(own)["spec"] == {"minMember": 2}
    assert render_statefulset(own)["spec"]["template"]["spec"]["schedulerName"] == "my-sched"


def test_podgroup_for_volcano() -> None:
    gang = job(scheduling={"gang": {"provider": "volcano", "queue": "training"}}, pod={"annotations": {"a": "b"}})
    assert render_podgroup(gang) == {
        "apiVersion": "scheduling.volcano.sh/v1beta1",
        "kind": "PodGroup",
        "metadata": {
            "name": "tiny",
            "namespace": "ns",
            "labels": {**LABELS, "finetune.dev/component": "gang"},
            "ownerReferences": [OWNER],
        },
        "spec": {"minMember": 2, "queue": "training"},
    }
    template = render_statefulset(gang)["spec"]["template"]
    assert template["metadata"] == {
        "labels": {**LABELS, "finetune.dev/component": "trainer"},
        "annotations": {"a": "b", "scheduling.k8s.io/group-name": "tiny"},
    }
    assert template["spec"]["schedulerName"] == "volcano"
    assert render_podgroup(job(scheduling={"gang": {"provider": "volcano"}}))["spec"] == {"minMember": 2}


def test_no_gang_no_podgroup() -> None:
    assert render_podgroup(job()) is None
    assert render_podgroup(job(scheduling={})) is None
    assert "schedulerName" not in render_statefulset(job())["spec"]["template"]["spec"]


def test_podgroup_is_created_before_the_statefulset() -> None:
    kinds = [c["kind"] for c in render_children(job(scheduling={"gang": {"provider": "volcano"}}))]
    assert kinds[-2:] == ["PodGroup", "StatefulSet"]


@pytest.mark.parametrize(
    ("scheduling", "pod", "path"),
    [
        (
            {"gang": {"provider": "volcano", "scheduleTimeoutSeconds": 60}},
            {},
            "spec.scheduling.gang.scheduleTimeoutSeconds",
        ),
        ({"gang": {"provider": "coscheduling", "queue": "q"}}, {}, "spec.scheduling.gang.queue"),
        ({"gang": {"provider": "kueue"}}, {}, "spec.scheduling.gang.provider"),
        ({"gang": {}}, {}, "spec.scheduling.gang.provider"),
        (
            {"gang": {"provider": "coscheduling", "scheduleTimeoutSeconds": 0}},
            {},
            "spec.scheduling.gang.scheduleTimeoutSeconds",
        ),
        ({"gang": {"provider": "volcano"}}, {"schedulerName": "default-scheduler"}, "spec.pod.schedulerName"),
    ],
)
def test_gang_settings_are_validated_by_field(scheduling: dict[str, Any], pod: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidSpecError) as exc:
        job(scheduling=scheduling, pod=pod)
    assert path in [p for p, _ in exc.value.problems], exc.value.problems


def test_gang_is_immutable() -> None:
    sts = render_statefulset(job(scheduling={"gang": {"provider": "volcano"}}))
    assert immutable_changes(job(scheduling={"gang": {"provider": "volcano"}}, suspend=True), sts) == []
    assert [path for path, _ in immutable_changes(job(), sts)] == ["spec.scheduling.gang"]
    assert [path for path, _ in immutable_changes(job(scheduling={"gang": {"provider": "coscheduling"}}), sts)] == [
        "spec.scheduling.gang"
    ]
    # A refused change runs as accepted: still the Volcano gang.
    runs = job_as_accepted(job(), sts)
    assert render_podgroup(runs)["apiVersion"] == "scheduling.volcano.sh/v1beta1"
    no_gang = render_statefulset(job())
    assert render_podgroup(job_as_accepted(job(scheduling={"gang": {"provider": "volcano"}}), no_gang)) is None


# --- queues (spec.scheduling.queueName, Kueue) ---------------------------------------------------


def queued_job(labels: dict[str, str] | None = None, **spec_overrides: Any) -> SFTJob:
    spec = tiny_job_spec(**{"checkpoints": {"claim": {"size": "1Gi", "storageClassName": "local"}}, **spec_overrides})
    return parse_job(
        {"metadata": {"name": "tiny", "namespace": "ns", "uid": "uid-1", "labels": labels or {}}, "spec": spec}
    )


def test_queue_name_labels_the_statefulset_for_kueue() -> None:
    plain = render_statefulset(job())
    queued = render_statefulset(job(scheduling={"queueName": "team-a"}))
    assert queued["metadata"]["labels"] == {
        **LABELS,
        "finetune.dev/component": "trainer",
        "kueue.x-k8s.io/queue-name": "team-a",
    }
    # Kueue labels the pods itself (group name, total count): the template stays as without a queue,
    # and so does the selector.
    assert queued["spec"]["template"] == plain["spec"]["template"]
    assert queued["spec"]["selector"] == plain["spec"]["selector"]
    assert queued["spec"]["replicas"] == 2
    assert "kueue.x-k8s.io/queue-name" not in plain["metadata"]["labels"]
    assert (
        queued["metadata"]["annotations"][ANNOTATION_DESIRED_HASH]
        != plain["metadata"]["annotations"][ANNOTATION_DESIRED_HASH]
    )
    assert json.loads(queued["metadata"]["annotations"][ANNOTATION_ACCEPTED_SPEC])["scheduling.queueName"] == "team-a"
    # No other child carries it: Kueue's StatefulSet integration reads the StatefulSet only.
    for child in render_children(job(scheduling={"queueName": "team-a"})):
        if child["kind"] != "StatefulSet":
            assert "kueue.x-k8s.io/queue-name" not in child["metadata"]["labels"], child["kind"]


def test_queue_label_on_the_sftjob_is_the_same_as_the_field() -> None:
    by_label = render_statefulset(queued_job({"kueue.x-k8s.io/queue-name": "team-a"}))
    by_field = render_statefulset(queued_job(scheduling={"queueName": "team-a"}))
    both = render_statefulset(queued_job({"kueue.x-k8s.io/queue-name": "team-a"}, scheduling={"queueName": "team-a"}))
    assert by_label == by_field == both


def test_suspended_queued_job_keeps_its_queue_at_zero_pods() -> None:
    suspended = render_statefulset(job(scheduling={"queueName": "team-a"}, suspend=True))
    assert suspended["spec"]["replicas"] == 0
    assert suspended["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"


def test_queue_label_and_field_that_differ_are_refused_naming_the_field() -> None:
    with pytest.raises(InvalidSpecError) as exc:
        queued_job({"kueue.x-k8s.io/queue-name": "team-b"}, scheduling={"queueName": "team-a"})
    assert exc.value.problems == [
        (
            "spec.scheduling.queueName",
            "'team-a' differs from the kueue.x-k8s.io/queue-name label on the SFTJob ('team-b'): set one of them, "
            "or the same queue in both",
        )
    ]


@pytest.mark.parametrize(
    ("labels", "scheduling", "path"),
    [
        ({}, {"queueName": "Team_A"}, "spec.scheduling.queueName"),
        ({}, {"queueName": ""}, "spec.scheduling.queueName"),
        ({}, {"queueName": "q" * 64}, "spec.scheduling.queueName"),
        ({"kueue.x-k8s.io/queue-name": "Team_A"}, {}, "metadata.labels[kueue.x-k8s.io/queue-name]"),
    ],
)
def test_queue_names_are_validated_by_field(labels: dict[str, str], scheduling: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidSpecError) as exc:
        queued_job(labels, scheduling=scheduling)
    assert [p for p, _ in exc.value.problems] == [path], exc.value.problems


def test_queue_is_immutable_by_field_and_by_label() -> None:
    sts = render_statefulset(job(scheduling={"queueName": "team-a"}))
    assert immutable_changes(job(scheduling={"queueName": "team-a"}, suspend=True), sts) == []
    assert immutable_changes(queued_job({"kueue.x-k8s.io/queue-name": "team-a"}), sts) == []
    for moved in (job(scheduling={"queueName": "team-b"}), queued_job({"kueue.x-k8s.io/queue-name": "team-b"}), job()):
        assert [path for path, _ in immutable_changes(moved, sts)] == ["spec.scheduling.queueName"]
    # A refused change runs as accepted: still in team-a.
    runs = job_as_accepted(queued_job({"kueue.x-k8s.io/queue-name": "team-b"}), sts)
    assert render_statefulset(runs)["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    no_queue = render_statefulset(job())
    assert (
        "kueue.x-k8s.io/queue-name"
        not in render_statefulset(job_as_accepted(job(scheduling={"queueName": "team-a"}), no_queue))["metadata"][
            "labels"
        ]
    )


def test_remote_sources_add_the_transfer_sidecar_with_the_credentials_by_reference() -> None:
    rendered = job(
        modelPath="hf://org/model@main",
        dataPath="s3://bkt/d/train.jsonl",
        remote={
            "huggingFace": {"tokenSecret": "hf-token", "endpoint": "http://hub.local:8080"},
            "s3": {"credentialsSecret": "s3-creds", "endpoint": "http://s3.local:9000"},
        },
        export={"uri": "s3://out/runs"},
    )
    pod = render_statefulset(rendered)["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["trainer", "reporter", "transfer"]
    transfer = pod["containers"][2]
    assert transfer["command"] == ["python", "-m", "sft_trainer.transfer"]
    assert transfer["image"] == pod["containers"][0]["image"]
    assert transfer["env"][3:] == [
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_ENDPOINT", "value": "http://hub.local:8080"},
        {"name": "SFT_HF_TOKEN_SECRET", "value": "hf-token"},
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}}},
        {"name": "AWS_ENDPOINT_URL", "value": "http://s3.local:9000"},
        {"name": "SFT_S3_SECRET", "value": "s3-creds"},
        {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}}},
        {
            "name": "AWS_SECRET_ACCESS_KEY",
            "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}},
        },
        {
            "name": "AWS_SESSION_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "AWS_SESSION_TOKEN", "optional": True}},
        },
        # The spec names the endpoint: the Secret's AWS_ENDPOINT_URL is not referenced as well.
        {
            "name": "AWS_REGION",
            "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "AWS_REGION", "optional": True}},
        },
    ]
    assert transfer["volumeMounts"] == [
        {"name": "checkpoints", "mountPath": "/checkpoints"},
        {"name": "training-config", "mountPath": "/etc/sft", "readOnly": True},
        {"name": "transfer-tmp", "mountPath": "/tmp"},
    ]
    assert transfer["securityContext"]["readOnlyRootFilesystem"] is True
    config = json.loads(render_configmap(rendered)["data"]["training.json"])
    assert config["trainingArgs"]["model_path"] == "/checkpoints/.sft-sources/org-model-main-876d9f0a51cc/files"
    assert [s["field"] for s in config["sources"]] == ["spec.modelPath", "spec.dataPath"]


def test_a_cache_claim_is_mounted_read_only_in_the_trainer() -> None:
    pod = render_statefulset(job(modelPath="hf://org/model", remote={"cacheClaim": "hub-cache"}))["spec"]["template"][
        "spec"
    ]
    trainer, transfer = pod["containers"][0], pod["containers"][2]
    assert {"name": "source-cache", "mountPath": "/sft-source-cache", "readOnly": True} in trainer["volumeMounts"]
    assert {"name": "source-cache", "mountPath": "/sft-source-cache", "readOnly": False} in transfer["volumeMounts"]
    assert {"name": "source-cache", "persistentVolumeClaim": {"claimName": "hub-cache"}} in pod["volumes"]


def test_a_job_with_nothing_remote_has_no_transfer_sidecar() -> None:
    pod = render_statefulset(job())["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["trainer", "reporter"]
