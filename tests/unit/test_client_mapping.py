"""sft() parameters -> SFTJob manifest, exactly; path mapping; bad parameters named, with the
operator's messages. Pure: nothing here talks to a cluster."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from sft_client.api import mapping
from sft_client.api.mapping import (
    ClusterOptions,
    SFTParameterError,
    build_sftjob,
    generate_job_name,
    param_for_spec_path,
)
from sft_client.api.paths import (
    ClaimPath,
    PathProblem,
    claim_volume_name,
    parse_claim_path,
    place_checkpoints,
    pod_path_to_url,
)
from sft_client.api.training_hub import KubernetesSFTBackend
from sft_models.models import InvalidSpecError, parse_spec

BASE: dict[str, Any] = dict(
    model_path="Qwen/Qwen2.5-7B-Instruct",
    data_path="pvc://datasets/train.jsonl",
    ckpt_output_dir="pvc://ckpts/run1",
    num_epochs=3,
    effective_batch_size=32,
    learning_rate=2e-5,
    max_seq_len=2048,
)


def build(cluster: ClusterOptions | None = None, **params: Any) -> dict[str, Any]:
    return build_sftjob({**BASE, **params}, cluster or ClusterOptions(), name="job", namespace="ml")


def problems(cluster: ClusterOptions | None = None, **params: Any) -> list[tuple[str, str | None, str]]:
    with pytest.raises(SFTParameterError) as info:
        build(cluster, **params)
    return [(p.param, p.spec_path, p.message) for p in info.value.parameters]


DATASETS_VOLUME = {"name": "pvc-datasets", "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True}}
DATASETS_MOUNT = {"name": "pvc-datasets", "mountPath": "/mnt/pvc/datasets", "readOnly": True}


def test_the_seed_call_maps_field_by_field() -> None:
    manifest = build(
        max_tokens_per_gpu=45000,
        backend="instructlab-training",
        nnodes=2,
        nproc_per_node=8,
        data_output_dir="pvc://ckpts/processed",
        save_samples=1000,
        warmup_steps=10,
        accelerate_full_state_at_epoch=True,
        checkpoint_at_epoch=False,
        is_pretraining=True,
        block_size=512,
        document_column_name="text",
        beta1=0.8,
        beta2=0.99,
        eps=1e-6,
        weight_decay=0.01,
        rdzv_id=42,
        master_port=29600,
        wandb_project="p",
        wandb_entity="e",
        wandb_run_name="r",
        tensorboard_log_dir="/checkpoints/run1/tb",
        mlflow_tracking_uri="http://mlflow:5000",
        mlflow_experiment_name="x",
        mlflow_run_name="y",
        validation_split=0.1,
        validation_frequency=50,
        keep_last_checkpoint_only=True,
        fsdp_options={"cpu_offload_params": True},
    )
    assert manifest == {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "SFTJob",
        "metadata": {"name": "job", "namespace": "ml"},
        "spec": {
            "modelPath": "Qwen/Qwen2.5-7B-Instruct",
            "dataPath": "/mnt/pvc/datasets/train.jsonl",
            "dataOutputDir": "/checkpoints/processed",  # on the checkpoint claim: its mount
            "numEpochs": 3,
            "effectiveBatchSize": 32,
            "learningRate": 2e-5,
            "maxSeqLen": 2048,
            "maxTokensPerGpu": 45000,
            "warmupSteps": 10,
            "saveSamples": 1000,
            "checkpointAtEpoch": False,
            "accelerateFullStateAtEpoch": True,
            "beta1": 0.8,
            "beta2": 0.99,
            "eps": 1e-6,
            "weightDecay": 0.01,
            "isPretraining": True,
            "blockSize": 512,
            "documentColumnName": "text",
            "validationSplit": 0.1,
            "validationFrequency": 50,
            "mlflowTrackingUri": "http://mlflow:5000",
            "mlflowExperimentName": "x",
            "mlflowRunName": "y",
            "wandbProject": "p",
            "wandbEntity": "e",
            "wandbRunName": "r",
            "tensorboardLogDir": "/checkpoints/run1/tb",
            "extraArgs": {"keep_last_checkpoint_only": True, "fsdp_options": {"cpu_offload_params": True}},
            "nnodes": 2,
            "nprocPerNode": 8,
            "rdzvPort": 29600,
            "rdzvId": "42",
            "checkpoints": {"existingClaim": "ckpts", "path": "run1"},
            "pod": {"volumes": [DATASETS_VOLUME], "volumeMounts": [DATASETS_MOUNT]},
        },
    }


def test_unset_parameters_stay_unset_so_the_operators_defaults_apply() -> None:
    spec = build()["spec"]
    assert spec == {
        "modelPath": "Qwen/Qwen2.5-7B-Instruct",
        "dataPath": "/mnt/pvc/datasets/train.jsonl",
        "numEpochs": 3,
        "effectiveBatchSize": 32,
        "learningRate": 2e-5,
        "maxSeqLen": 2048,
        "checkpoints": {"existingClaim": "ckpts", "path": "run1"},
        "pod": {"volumes": [DATASETS_VOLUME], "volumeMounts": [DATASETS_MOUNT]},
    }
    # None means "not given", as in training_hub.
    assert build(warmup_steps=None, beta1=None)["spec"] == spec


def test_cluster_settings_map_onto_the_pod_and_the_checkpoint_claim() -> None:
    cluster = ClusterOptions(
        image="trainer:2",
        resources={"limits": {"cpu": 8, "memory": "500Gi"}},
        device="cpu",
        checkpoint_claim_size="500Gi",
        storage_class="fast",
        delete_checkpoints_with_job=True,
        adopt_existing_checkpoints=True,
        env={"HF_TOKEN": "t", "RETRIES": 3},
        volumes=[{"name": "models", "nfs": {"server": "nfs", "path": "/models"}}],
        volume_mounts=[{"name": "models", "mountPath": "/models"}],
        pod={"nodeSelector": {"pool": "a100"}, "priorityClassName": "high"},
        max_restarts=5,
        full_state_retention=2,
        suspend=True,
        labels={"team": "ml"},
    )
    manifest = build(cluster, model_path="/models/qwen", ckpt_output_dir="./runs/a")
    assert manifest["metadata"] == {"name": "job", "namespace": "ml", "labels": {"team": "ml"}}
    spec = manifest["spec"]
    assert spec["modelPath"] == "/models/qwen"
    assert spec["checkpoints"] == {
        "path": "runs/a",
        "claim": {"size": "500Gi", "storageClassName": "fast"},
        "deleteWithJob": True,
        "adoptExisting": True,
    }
    assert spec["pod"] == {
        "image": "trainer:2",
        "resources": {"limits": {"cpu": 8, "memory": "500Gi"}},
        "nodeSelector": {"pool": "a100"},
        "priorityClassName": "high",
        "env": [{"name": "HF_TOKEN", "value": "t"}, {"name": "RETRIES", "value": "3"}],
        "volumes": [{"name": "models", "nfs": {"server": "nfs", "path": "/models"}}, DATASETS_VOLUME],
        "volumeMounts": [{"name": "models", "mountPath": "/models"}, DATASETS_MOUNT],
    }
    assert (spec["device"], spec["maxRestarts"], spec["fullStateRetention"], spec["suspend"]) == ("cpu", 5, 2, True)


def test_manifest_is_what_the_operator_accepts() -> None:
    spec = parse_spec(build(max_tokens_per_gpu=4096, keep_last_checkpoint_only=True)["spec"])
    args = spec.training_args()
    assert (args["model_path"], args["data_path"], args["ckpt_output_dir"]) == (
        # A Hugging Face id is fetched once by the transfer sidecar; the trainer reads the copy.
        "/checkpoints/.sft-sources/Qwen-Qwen2.5-7B-Instruct-58ba5dd6b2cf/files",
        "/mnt/pvc/datasets/train.jsonl",
        "/checkpoints/run1",
    )
    assert (args["max_batch_len"], args["keep_last_checkpoint_only"]) == (4096, True)


def test_training_hub_aliases_and_types() -> None:
    spec = build(max_batch_len=4096, nproc_per_node="4", effective_batch_size=32)["spec"]
    assert (spec["maxTokensPerGpu"], spec["nprocPerNode"]) == (4096, 4)
    assert "extraArgs" not in spec


def test_paths_a_pod_cannot_see_are_refused_naming_the_parameter() -> None:
    found = problems(model_path="./my-model", data_path="data/train.jsonl", ckpt_output_dir="/abs/ckpts")
    assert [(param, path) for param, path, _ in found] == [
        ("ckpt_output_dir", "spec.checkpoints"),
        ("model_path", "spec.modelPath"),
        ("data_path", "spec.dataPath"),
    ]
    assert "checkpoints live on a volume the job owns" in found[0][2]
    assert found[1][2].startswith(
        "'./my-model' is a path on this machine, which the pods cannot see: use a Hugging Face id"
    )
    assert "Hugging Face" not in found[2][2]  # data is never a Hub id


def test_relative_checkpoint_dir_needs_storage_and_pvc_excludes_it() -> None:
    assert problems(ckpt_output_dir="./checkpoints")[0][:2] == ("ckpt_output_dir", "spec.checkpoints")
    found = problems(ClusterOptions(checkpoint_claim_size="1Gi"))
    assert found == [
        (
            "ckpt_output_dir",
            "spec.checkpoints",
            "names an existing claim (pvc://...) and checkpoint_claim_size asks for a new one: give one of them",
        )
    ]
    assert problems(ClusterOptions(storage_class="fast")) == [
        ("storage_class", None, "only applies with checkpoint_claim_size")
    ]


def test_the_operators_messages_name_the_parameter_and_the_field() -> None:
    assert problems(num_epochs=0, learning_rate=-1) == [
        ("num_epochs", "spec.numEpochs", "Input should be greater than or equal to 1"),
        ("learning_rate", "spec.learningRate", "Input should be greater than 0"),
    ]
    assert problems(max_tokens_per_gpu=100, nnodes=4, nproc_per_node=16, not_an_arg=1, adamw_eps=1e-6) == [
        ("not_an_arg", "spec.extraArgs.not_an_arg", "unknown instructlab-training argument"),
        ("adamw_eps", "spec.extraArgs.adamw_eps", "set by the operator from spec.eps; use that field"),
        (
            "effective_batch_size",
            "spec.effectiveBatchSize",
            "must be at least nnodes * nprocPerNode = 64 (one sample per GPU per step)",
        ),
        ("max_tokens_per_gpu", "spec.maxTokensPerGpu", "must be at least spec.maxSeqLen (one full sequence per GPU)"),
    ]
    assert problems(validation_split=0.2) == [
        ("validation_frequency", "spec.validationFrequency", "required when spec.validationSplit > 0")
    ]


def test_what_cannot_run_on_the_cluster_is_refused_not_dropped() -> None:
    found = problems(
        backend="mini-trainer",
        callbacks=[object()],
        node_rank=0,
        rdzv_endpoint="h:1",
        master_addr="h",
        nproc_per_node="auto",
    )
    assert [param for param, _, _ in found] == [
        "backend",
        "callbacks",
        "node_rank",
        "rdzv_endpoint",
        "master_addr",
        "nproc_per_node",
    ]
    assert found[0][2] == (
        "'mini-trainer': the cluster runs 'instructlab-training' only (give backend='instructlab-training' or 'kubernetes')"
    )


def test_cluster_settings_errors_name_the_cluster_parameter() -> None:
    found = problems(ClusterOptions(env={"PET_NNODES": "3"}, image="", max_restarts=-1))
    assert [(param, path) for param, path, _ in found] == [
        ("image", "spec.pod.image"),
        ("max_restarts", "spec.maxRestarts"),
    ]
    found = problems(ClusterOptions(env={"PET_NNODES": "3"}, volumes=[DATASETS_VOLUME]))
    assert found == [
        ("volumes", "spec.pod.volumes", "volume 'pvc-datasets' is defined twice (pvc:// paths add pvc-<claim>)"),
        ("env", "spec.pod.env[0].name", "PET_NNODES is set by the operator"),
    ]


def test_the_error_is_the_operators_error_type_and_reads_well() -> None:
    with pytest.raises(InvalidSpecError) as info:
        build(num_epochs=0, node_rank=1)
    assert str(info.value) == (
        "invalid sft() parameters: node_rank: set by the operator: each pod's rank comes from its ordinal; "
        "the operator starts one pod per node; num_epochs (spec.numEpochs): Input should be greater than or equal to 1"
    )
    assert info.value.problems == [
        (
            "node_rank",
            "set by the operator: each pod's rank comes from its ordinal; the operator starts one pod per node",
        ),
        ("spec.numEpochs", "Input should be greater than or equal to 1"),
    ]


def test_job_names() -> None:
    assert generate_job_name("Qwen/Qwen2.5-7B-Instruct", "ab1c2") == "sft-qwen2-5-7b-instruct-ab1c2"
    assert generate_job_name("pvc://models/llama/", "x0000") == "sft-llama-x0000"
    assert generate_job_name("", "x0000") == "sft-x0000"
    long = generate_job_name("org/" + "a" * 100)
    assert len(long) == 52 and long.startswith("sft-aaa")
    with pytest.raises(SFTParameterError) as info:
        build_sftjob(BASE, ClusterOptions(), name="Bad_Name", namespace="ml")
    assert info.value.params == ["name"]


def test_spec_paths_lead_back_to_parameters() -> None:
    assert param_for_spec_path("spec.maxTokensPerGpu") == "max_tokens_per_gpu"
    assert param_for_spec_path("spec.extraArgs.fsdp_options") == "fsdp_options"
    assert param_for_spec_path("spec.pod.env[3].name") == "env"
    assert param_for_spec_path("spec.pod.nodeSelector") == "pod"
    assert param_for_spec_path("spec.pod.resources.limits[nvidia.com/gpu]") == "resources"
    assert param_for_spec_path("spec.checkpoints.claim.size") == "checkpoint_claim_size"
    assert param_for_spec_path("spec.checkpoints.path") == "ckpt_output_dir"
    assert param_for_spec_path("spec.rdzvPort") == "master_port"
    assert param_for_spec_path("metadata.name") == "name"


# --- paths ------------------------------------------------------------------------------------


def test_claim_paths() -> None:
    assert parse_claim_path("pvc://data/a//b/./c.jsonl", "data_path") == ClaimPath("data", "a/b/c.jsonl")
    assert parse_claim_path("pvc://data", "data_path") == ClaimPath("data", "")
    assert ClaimPath("data", "a/b").url() == "pvc://data/a/b"
    for bad, expected in (
        ("pvc:///a", "names no claim"),
        ("pvc://Data/a", "is not a PersistentVolumeClaim name"),
        ("pvc://data/../etc", "may not contain '..'"),
    ):
        with pytest.raises(PathProblem, match=expected) as info:
            parse_claim_path(bad, "data_path")
        assert info.value.param == "data_path"


def test_checkpoint_placement() -> None:
    assert place_checkpoints("pvc://c/runs/a/", creates_claim=False).as_spec() == {
        "existingClaim": "c",
        "path": "runs/a",
    }
    assert place_checkpoints("./checkpoints", creates_claim=True).as_spec() == {"path": "checkpoints"}
    assert place_checkpoints(".", creates_claim=True).as_spec() == {}
    with pytest.raises(PathProblem, match="only pvc://"):
        place_checkpoints("s3://bucket/x", creates_claim=False)


def test_claims_are_mounted_once_and_writable_only_when_written() -> None:
    spec = build(
        model_path="pvc://store/models/qwen",
        data_path="pvc://store/data/train.jsonl",
        tensorboard_log_dir="pvc://logs/tb",
    )["spec"]
    assert (spec["modelPath"], spec["dataPath"], spec["tensorboardLogDir"]) == (
        "/mnt/pvc/store/models/qwen",
        "/mnt/pvc/store/data/train.jsonl",
        "/mnt/pvc/logs/tb",
    )
    assert spec["pod"] == {
        "volumes": [
            {"name": "pvc-store", "persistentVolumeClaim": {"claimName": "store", "readOnly": True}},
            {"name": "pvc-logs", "persistentVolumeClaim": {"claimName": "logs"}},
        ],
        "volumeMounts": [
            {"name": "pvc-store", "mountPath": "/mnt/pvc/store", "readOnly": True},
            {"name": "pvc-logs", "mountPath": "/mnt/pvc/logs"},
        ],
    }


def test_volume_names_fit_a_dns_label() -> None:
    assert claim_volume_name("data.v2") == "pvc-data-v2"
    long = claim_volume_name("c" * 200)
    assert len(long) == 63 and long.startswith("pvc-ccc")
    assert claim_volume_name("c" * 200) != claim_volume_name("c" * 199)


def test_checkpoint_paths_become_urls_on_their_claim() -> None:
    assert pod_path_to_url("/checkpoints/run1/hf_format/samples_8", "ckpts") == "pvc://ckpts/run1/hf_format/samples_8"
    assert pod_path_to_url("/checkpointsX/a", "ckpts") == "/checkpointsX/a"
    assert pod_path_to_url("/other/a", "ckpts") == "/other/a"


# --- signatures -------------------------------------------------------------------------------


# (sft() and SFTAlgorithm.train against training-hub 0.11.2's: test_training_hub_conformance.py)


def test_backend_takes_cluster_settings_from_algorithm_params_too() -> None:
    backend = KubernetesSFTBackend(namespace="a", image="i:1")
    manifest, options = backend.build({**BASE, "namespace": "b", "name": "named"})
    assert (manifest["metadata"], options.image) == ({"name": "named", "namespace": "b"}, "i:1")
    assert manifest["spec"]["pod"]["image"] == "i:1"


def test_module_exports() -> None:
    assert set(mapping.__all__) <= set(dir(mapping))


def test_run_policy_fields_are_sft_keyword_arguments() -> None:
    """training_hub has no name for them: sft(..., active_deadline_seconds=...) under the spec's own."""
    params = dict(
        model_path="m",
        data_path="/d.jsonl",
        ckpt_output_dir="pvc://c/x",
        num_epochs=1,
        effective_batch_size=8,
        learning_rate=1e-5,
        max_seq_len=64,
        active_deadline_seconds=3600,
        startup_timeout_seconds=600,
        stall_timeout_seconds=900,
        ttl_seconds_after_finished=60,
    )
    spec = build_sftjob(params, ClusterOptions(), name="x", namespace="ns")["spec"]
    assert {k: v for k, v in spec.items() if "Seconds" in k} == {
        "activeDeadlineSeconds": 3600,
        "startupTimeoutSeconds": 600,
        "stallTimeoutSeconds": 900,
        "ttlSecondsAfterFinished": 60,
    }


def test_gang_and_queue_are_sft_keyword_arguments() -> None:
    """training_hub has no names for them: gang= (a provider, or the spec's gang object) and
    queue_name= (a Kueue LocalQueue) fill spec.scheduling; scheduling= passes the object as is."""
    params = dict(
        model_path="m",
        data_path="/d.jsonl",
        ckpt_output_dir="pvc://c/x",
        num_epochs=1,
        effective_batch_size=8,
        learning_rate=1e-5,
        max_seq_len=64,
    )
    spec = build_sftjob(
        {**params, "gang": "volcano", "queue_name": "team-a"}, ClusterOptions(), name="x", namespace="ns"
    )["spec"]
    assert spec["scheduling"] == {"queueName": "team-a", "gang": {"provider": "volcano"}}
    gang = {"provider": "coscheduling", "scheduleTimeoutSeconds": 300}
    spec = build_sftjob({**params, "gang": gang}, ClusterOptions(), name="x", namespace="ns")["spec"]
    assert spec["scheduling"] == {"gang": {"provider": "coscheduling", "scheduleTimeoutSeconds": 300}}
    spec = build_sftjob({**params, "scheduling": {"queueName": "q"}}, ClusterOptions(), name="x", namespace="ns")[
        "spec"
    ]
    assert spec["scheduling"] == {"queueName": "q"}
    assert "scheduling" not in build_sftjob(params, ClusterOptions(), name="x", namespace="ns")["spec"]
    manifest, _ = KubernetesSFTBackend().build({**params, "queue_name": "team-a", "active_deadline_seconds": 60})
    assert (manifest["spec"]["scheduling"], manifest["spec"]["activeDeadlineSeconds"]) == ({"queueName": "team-a"}, 60)


@pytest.mark.parametrize(
    ("extra", "labels", "param", "path"),
    [
        ({"queue_name": "Team_A"}, None, "queue_name", "spec.scheduling.queueName"),
        ({"scheduling": {"queueName": "Team_A"}}, None, "scheduling", "spec.scheduling.queueName"),
        ({"gang": "kueue"}, None, "gang", "spec.scheduling.gang.provider"),
        ({"gang": "volcano", "scheduling": {"gang": {"provider": "volcano"}}}, None, "gang", "spec.scheduling.gang"),
        ({"queue_name": "a"}, {"kueue.x-k8s.io/queue-name": "b"}, "queue_name", "spec.scheduling.queueName"),
        ({}, {"kueue.x-k8s.io/queue-name": "B!"}, "labels", "metadata.labels[kueue.x-k8s.io/queue-name]"),
    ],
)
def test_gang_and_queue_problems_name_the_parameter(
    extra: dict[str, Any], labels: dict[str, str] | None, param: str, path: str
) -> None:
    params = dict(
        model_path="m",
        data_path="/d.jsonl",
        ckpt_output_dir="pvc://c/x",
        num_epochs=1,
        effective_batch_size=8,
        learning_rate=1e-5,
        max_seq_len=64,
        **extra,
    )
    with pytest.raises(SFTParameterError) as exc:
        build_sftjob(params, ClusterOptions(labels=labels), name="x", namespace="ns")
    assert [(p.param, p.spec_path) for p in exc.value.parameters] == [(param, path)], exc.value.parameters


def test_checkpoint_at_epoch_off_warns_before_anything_is_sent() -> None:
    params = dict(
        model_path="m",
        data_path="/d.jsonl",
        ckpt_output_dir="pvc://c/x",
        num_epochs=1,
        effective_batch_size=8,
        learning_rate=1e-5,
        max_seq_len=64,
    )
    with pytest.warns(UserWarning, match=r"^checkpoint_at_epoch=False: spec.checkpointAtEpoch: false also stops"):
        KubernetesSFTBackend().build({**params, "checkpoint_at_epoch": False})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        KubernetesSFTBackend().build({**params, "checkpoint_at_epoch": False, "accelerate_full_state_at_epoch": False})
        KubernetesSFTBackend().build(params)


def test_a_gpu_request_other_than_nproc_per_node_is_refused_before_anything_is_sent() -> None:
    """The client validates with the operator's own models: the rule names the parameter."""
    found = problems(
        ClusterOptions(resources={"limits": {"nvidia.com/gpu": 4}}), nproc_per_node=8, effective_batch_size=8
    )
    assert found == [
        (
            "resources",
            "spec.pod.resources.limits[nvidia.com/gpu]",
            "4 differs from spec.nprocPerNode (8): each process uses one GPU; leave it out (the "
            "operator requests nprocPerNode GPUs) or change spec.nprocPerNode",
        )
    ]
