"""The SFTJob API: pydantic models, the single source of names, defaults and validation.

The CRD (crd.py) is generated from these models. Field names are camelCase aliases of the
snake_case attributes; the training fields are exactly training_hub ``sft()``'s keyword
arguments in camelCase, so ``sft(max_tokens_per_gpu=...)`` is ``spec.maxTokensPerGpu``.
"""

from __future__ import annotations

import enum
import posixpath
import re
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, PlainValidator, ValidationError, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from sft_core import contract, sources
from sft_core.progress import TrainingProgress
from sft_core.wire import ApiModel
from sft_models import pod_security
from sft_models.algorithms import OSFT_ONLY_FIELDS, Algorithm, algorithm_problems, osft_training_args
from sft_models.training_args import TRAINING_ARGS_FIELDS, UNSERIALIZABLE_FIELDS

DEFAULT_IMAGE = "sft-trainer:0.1.0"
GPU_RESOURCE = "nvidia.com/gpu"
# A pod's controller-revision-hash label is "<statefulset>-<10 chars>" and must fit in 63.
MAX_JOB_NAME_LENGTH = 52
# The job name is also the headless Service's name, which must be a DNS-1035 label.
JOB_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# Kubernetes resource.Quantity, as the apiserver's own regexp spells it.
QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"

RESERVED_ENV = frozenset(
    {
        contract.ENV_NNODES,
        contract.ENV_NPROC_PER_NODE,
        contract.ENV_MASTER_ADDR,
        contract.ENV_MASTER_PORT,
        contract.ENV_RDZV_ENDPOINT,
        contract.ENV_RDZV_ID,
        contract.ENV_NODE_RANK,
        contract.ENV_POD_STATE_DIR,
        contract.ENV_TERMINATION_GRACE_SECONDS,
        contract.ENV_POD_NAME,
        contract.ENV_CONFIG_PATH,
        contract.ENV_DEVICE,
    }
)
# instructlab-training's timeout of the training's collectives (NCCL, gloo), in milliseconds; it
# raises in every worker on a value that is not a positive integer (the launcher refuses it too:
# sft_trainer/collective_timeout.py).
COLLECTIVE_TIMEOUT_ENV = "INSTRUCTLAB_NCCL_TIMEOUT_MS"
POSITIVE_INTEGER_PATTERN = r"^[0-9]*[1-9][0-9]*$"
RESERVED_VOLUMES = frozenset(
    {
        contract.CHECKPOINT_VOLUME,
        contract.CONFIG_VOLUME,
        contract.SHM_VOLUME,
        contract.POD_STATE_VOLUME,
        pod_security.REPORTER_TOKEN_VOLUME,
        contract.SOURCE_CACHE_VOLUME,
        contract.TRANSFER_TMP_VOLUME,
    }
)
RESERVED_MOUNT_PATHS = frozenset(
    {
        contract.CHECKPOINT_MOUNT_PATH,
        contract.CONFIG_MOUNT_PATH,
        contract.SHM_MOUNT_PATH,
        contract.POD_STATE_MOUNT_PATH,
        contract.SOURCE_CACHE_CLAIM_MOUNT_PATH,
    }
)


# --- spec -------------------------------------------------------------------------------------


class Device(str, enum.Enum):
    CUDA = "cuda"
    CPU = "cpu"  # tests and small smoke runs only


class AntiAffinity(str, enum.Enum):
    """How strictly the pods of one job avoid sharing a node."""

    PREFERRED = "Preferred"
    REQUIRED = "Required"
    DISABLED = "Disabled"


class AccessMode(str, enum.Enum):
    READ_WRITE_ONCE = "ReadWriteOnce"
    READ_WRITE_MANY = "ReadWriteMany"
    READ_WRITE_ONCE_POD = "ReadWriteOncePod"


def _check_quantity(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise PydanticCustomError("quantity", "must be a quantity such as 8 or 500Gi")
    if isinstance(value, str) and not re.match(QUANTITY_PATTERN, value):
        raise PydanticCustomError("quantity", "must be a quantity such as 8 or 500Gi")
    return value


# A Kubernetes quantity: an integer or a string like "500Gi" (int-or-string in the CRD).
Quantity = Annotated[
    Any,
    PlainValidator(_check_quantity),
    WithJsonSchema({"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN}),
]


class ClaimTemplate(ApiModel):
    """A PersistentVolumeClaim the operator creates for the job's checkpoints."""

    size: str = Field(pattern=QUANTITY_PATTERN, description="Requested storage, e.g. 500Gi.")
    storage_class_name: str | None = Field(default=None, description="Storage class; cluster default if unset.")
    access_modes: list[AccessMode] | None = Field(
        default=None,
        min_length=1,
        description="Defaults to ReadWriteMany when nnodes > 1 (every rank reads full_state/ on "
        "resume), ReadWriteOnce otherwise.",
    )


class CheckpointVolume(ApiModel):
    """Where checkpoints live: an existing claim, or a claim the operator creates."""

    existing_claim: str | None = Field(
        default=None, min_length=1, max_length=253, description="Name of an existing PersistentVolumeClaim."
    )
    claim: ClaimTemplate | None = Field(default=None, description="A claim for the operator to create.")
    path: str | None = Field(
        default=None,
        max_length=1024,
        description="Directory inside the volume for this job's checkpoints (relative); unset: the volume root.",
    )
    delete_with_job: bool = Field(
        default=False,
        description="Delete the operator-created claim, and so the checkpoints, when the SFTJob is "
        "deleted. Never applies to an existingClaim, nor to a claim another SFTJob created (a job created again "
        "under the same name finds its predecessor's claim: kept).",
    )
    adopt_existing: bool = Field(
        default=False,
        description="Continue from checkpoints another SFTJob with other training fields wrote in this directory "
        "(its owner record names it). Unset, such a job is refused (Failed, ConfigRejected, naming the directory and "
        "the other job); a job with the same training fields adopts them without it.",
    )


SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
EXPORT_URI_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"


class HuggingFaceAccess(ApiModel):
    """How the transfer sidecar reaches Hugging Face for hf:// sources."""

    token_secret: str | None = Field(
        default=None,
        max_length=253,
        pattern=SECRET_NAME_PATTERN,
        description=f"A Secret in the job's namespace whose key {contract.ENV_HF_TOKEN} holds a token (gated or private "
        "repos). Seen only by the transfer sidecar. Unset: anonymous.",
    )
    endpoint: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^\s?#]+$",
        description="The hub's address (a mirror, or a test server); unset: huggingface_hub's default.",
    )


class S3Access(ApiModel):
    """How the transfer sidecar reaches S3-compatible storage for s3:// sources and the export."""

    credentials_secret: str | None = Field(
        default=None,
        max_length=253,
        pattern=SECRET_NAME_PATTERN,
        description="A Secret in the job's namespace with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (optional: "
        "AWS_SESSION_TOKEN, AWS_ENDPOINT_URL, AWS_REGION), seen only by the transfer sidecar. Unset: web identity "
        "(AWS_WEB_IDENTITY_TOKEN_FILE) or container credentials where the cluster provides them, else anonymous "
        "(public buckets).",
    )
    endpoint: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^\s?#]+$",
        description="An S3-compatible endpoint (MinIO, Ceph, ...). Unset: the Secret's AWS_ENDPOINT_URL if it has one, "
        "else AWS.",
    )
    region: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[a-z0-9-]+$",
        description="The region. Unset: the Secret's AWS_REGION if it has one, else the bucket's location as the endpoint reports it.",
    )


class RemoteAccess(ApiModel):
    """Access to remote sources and the export target (docs/data.md)."""

    hugging_face: HuggingFaceAccess | None = Field(default=None, description="For hf:// sources.")
    s3: S3Access | None = Field(default=None, description="For s3:// sources and spec.export.")
    cache_claim: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=SECRET_NAME_PATTERN,
        description="An existing claim that caches fetched sources across jobs (every job naming it reuses what is "
        "there); unset: the checkpoint volume's root caches them.",
    )


class ExportTarget(ApiModel):
    """Where complete checkpoints are uploaded, off the training's critical path."""

    uri: str = Field(
        max_length=2048,
        pattern=EXPORT_URI_PATTERN,
        description="s3://<bucket>[/<prefix>]: each complete hf_format checkpoint goes to <prefix>/hf_format/<name>/. "
        "The job Succeeds once its final checkpoint is there. Deleting the job deletes nothing remote.",
    )
    full_states: bool = Field(
        default=False, description="Also upload each complete full state (resumable training state; large)."
    )
    restore: bool = Field(
        default=False,
        description="When the checkpoint directory holds no full state, first download the newest exported one "
        "(training_hub's checkpoint_storage). Needs fullStates.",
    )


class EnvVar(ApiModel):
    """A container EnvVar; fields other than name (value, valueFrom) pass through unchecked."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=253)


class Volume(ApiModel):
    """A pod Volume; the source (persistentVolumeClaim, nfs, ...) passes through unchecked."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=63)


class VolumeMount(ApiModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=63)
    mount_path: str = Field(min_length=1, max_length=4096)


class Resources(ApiModel):
    limits: dict[str, Quantity] = Field(default_factory=dict)
    requests: dict[str, Quantity] = Field(default_factory=dict)


class PodSettings(ApiModel):
    """What a cluster user sets on the training pods."""

    image: str = Field(default=DEFAULT_IMAGE, min_length=1, description="The trainer image (runs sft-trainer).")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    resources: Resources | None = Field(
        default=None,
        description=f"Container resources. With device cuda, {GPU_RESOURCE} defaults to nprocPerNode.",
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] | None = Field(
        default=None, description=f"Defaults to tolerating the {GPU_RESOURCE} taint (device cuda)."
    )
    affinity: dict[str, Any] | None = Field(default=None, description="Pod affinity, merged with antiAffinity.")
    anti_affinity: AntiAffinity = Field(
        default=AntiAffinity.PREFERRED,
        description="At most one pod of this job per node: Preferred, Required, or Disabled. "
        "Ignored when affinity sets podAntiAffinity.",
    )
    priority_class_name: str | None = None
    scheduler_name: str | None = None
    service_account_name: str | None = None
    env: list[EnvVar] = Field(default_factory=list, max_length=256, description="Extra container env.")
    volumes: list[Volume] = Field(default_factory=list, max_length=128, description="Extra pod volumes (data, model).")
    volume_mounts: list[VolumeMount] = Field(
        default_factory=list, max_length=128, description="Extra container volumeMounts."
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Extra pod labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra pod annotations.")
    shm_size_limit: str | None = Field(
        default=None, pattern=QUANTITY_PATTERN, description="Size limit of the /dev/shm memory volume."
    )
    termination_grace_period_seconds: int = Field(
        default=1800, ge=0, description="Long enough for an on-demand checkpoint to be written."
    )
    fs_group: int = Field(
        default=pod_security.RUN_AS_GROUP,
        ge=1,
        le=2147483647,
        description="The group that owns the pods' volumes: where a volume's root is not already owned by it, "
        "the kubelet makes the volume group-writable by it (fsGroupChangePolicy OnRootMismatch), so a claim a "
        f"storage driver creates root-owned is writable by the containers (they run as uid and gid "
        f"{pod_security.RUN_AS_USER}, which is in this group). Not 0 (root's group).",
    )


class GangProvider(str, enum.Enum):
    """Which gang scheduler admits the job's pods all together."""

    COSCHEDULING = "coscheduling"  # kubernetes-sigs/scheduler-plugins, scheduling.x-k8s.io PodGroup
    VOLCANO = "volcano"  # Volcano, scheduling.volcano.sh PodGroup


# The scheduler names each provider's pods get unless spec.scheduling.gang.schedulerName says
# otherwise: scheduler-plugins' chart installs the coscheduling plugin as a second scheduler of
# this name; Volcano's scheduler is "volcano".
GANG_DEFAULT_SCHEDULER: dict[GangProvider, str] = {
    GangProvider.COSCHEDULING: "scheduler-plugins-scheduler",
    GangProvider.VOLCANO: "volcano",
}


class GangScheduling(ApiModel):
    """All nnodes pods are scheduled together or not at all, through a PodGroup the operator
    creates (owned by the job, named after it)."""

    provider: GangProvider = Field(
        description="coscheduling (the scheduler-plugins Coscheduling plugin, PodGroup "
        "scheduling.x-k8s.io/v1alpha1) or volcano (PodGroup scheduling.volcano.sh/v1beta1)."
    )
    scheduler_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="The pods' schedulerName; defaults to scheduler-plugins-scheduler (coscheduling) or "
        "volcano. spec.pod.schedulerName, when set, must equal it.",
    )
    schedule_timeout_seconds: int | None = Field(
        default=None,
        ge=1,
        description="coscheduling only: the PodGroup's scheduleTimeoutSeconds, how long pods of a "
        "partly placeable group wait before the group is rejected; unset: the plugin's own default.",
    )
    queue: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="volcano only: the Volcano Queue of the PodGroup; unset: Volcano's default queue.",
    )

    @property
    def effective_scheduler_name(self) -> str:
        return self.scheduler_name or GANG_DEFAULT_SCHEDULER[self.provider]


# Kueue: the LocalQueue a workload is submitted to, as a label on the object Kueue's integration
# watches (here the StatefulSet; Kueue's StatefulSet integration reads it from metadata.labels).
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# A LocalQueue name, short enough to be a label value.
QUEUE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
QUEUE_NAME_MAX_LENGTH = 63


class Scheduling(ApiModel):
    """How the job's pods are scheduled as a group."""

    gang: GangScheduling | None = Field(
        default=None,
        description="Gang scheduling through a PodGroup (immutable: set it when the job is created).",
    )
    queue_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=QUEUE_NAME_MAX_LENGTH,
        pattern=QUEUE_NAME_PATTERN,
        description=f"The Kueue LocalQueue that admits the job's pods as one group: the StatefulSet gets the "
        f"{KUEUE_QUEUE_LABEL} label (Kueue's StatefulSet integration). The same label on the SFTJob "
        "does the same; both set must agree. Immutable.",
    )


# spec fields (camelCase) mapped onto TrainingArgs kwargs; extraArgs may not set these.
MAPPED_TRAINING_ARGS: dict[str, str] = {
    "model_path": "modelPath",
    "data_path": "dataPath",
    "ckpt_output_dir": "checkpoints.path",
    "data_output_dir": "dataOutputDir",
    "num_epochs": "numEpochs",
    "effective_batch_size": "effectiveBatchSize",
    "learning_rate": "learningRate",
    "max_seq_len": "maxSeqLen",
    "max_batch_len": "maxTokensPerGpu",
    "warmup_steps": "warmupSteps",
    "save_samples": "saveSamples",
    "checkpoint_at_epoch": "checkpointAtEpoch",
    "accelerate_full_state_at_epoch": "accelerateFullStateAtEpoch",
    "adamw_betas": "beta1/beta2",
    "adamw_eps": "eps",
    "adamw_weight_decay": "weightDecay",
    "pretraining_config": "isPretraining/blockSize/documentColumnName",
    "validation_split": "validationSplit",
    "validation_frequency": "validationFrequency",
    "mlflow_tracking_uri": "mlflowTrackingUri",
    "mlflow_experiment_name": "mlflowExperimentName",
    "mlflow_run_name": "mlflowRunName",
    "wandb_project": "wandbProject",
    "wandb_entity": "wandbEntity",
    "wandb_run_name": "wandbRunName",
    "tensorboard_log_dir": "tensorboardLogDir",
}
# The experiment loggers' settings: passed to TrainingArgs only when set.
LOGGER_FIELDS = tuple(key for key in MAPPED_TRAINING_ARGS if key.startswith(("mlflow_", "wandb_", "tensorboard_")))
# mini-trainer has no TensorBoard logger.
OSFT_LOGGER_FIELDS = tuple(key for key in LOGGER_FIELDS if not key.startswith("tensorboard_"))

# Spec paths (camelCase) that cannot change once the job exists: changing them would break
# resuming from the checkpoints already written. Everything else (suspend, pod settings,
# maxRestarts, checkpoints.deleteWithJob) may change.
IMMUTABLE_FIELDS: tuple[str, ...] = (
    "algorithm",
    "modelPath",
    "dataPath",
    "dataOutputDir",
    "numEpochs",
    "effectiveBatchSize",
    "learningRate",
    "maxSeqLen",
    "maxTokensPerGpu",
    "warmupSteps",
    "saveSamples",
    "checkpointAtEpoch",
    "accelerateFullStateAtEpoch",
    "beta1",
    "beta2",
    "eps",
    "weightDecay",
    "isPretraining",
    "blockSize",
    "documentColumnName",
    "validationSplit",
    "validationFrequency",
    "extraArgs",
    *OSFT_ONLY_FIELDS,
    "nnodes",
    "nprocPerNode",
    "rdzvPort",
    "rdzvId",
    "device",
    "fullStateRetention",
    "checkpoints.existingClaim",
    "checkpoints.claim",
    "checkpoints.path",
    # The pods of one job never straddle two gangs (or a gang and no gang).
    "scheduling.gang",
    # Nor two queues: Kueue refuses a change of a running StatefulSet's queue-name label.
    "scheduling.queueName",
    # Where sources come from and checkpoints go: fixed for the job's life (a fix of a credential
    # is a change of the Secret's content, which takes effect at the next fetch).
    "remote",
    "export",
)


# Where the checkpoints live and how the pods are placed: immutable, but resuming stays right
# when they change (the same directory reached through another claim, another queue).
PLACEMENT_FIELDS: tuple[str, ...] = (
    "rdzvPort",
    "rdzvId",
    "fullStateRetention",
    "checkpoints.existingClaim",
    "checkpoints.claim",
    "checkpoints.path",
    "scheduling.gang",
    "scheduling.queueName",
    "remote",
    "export",
)
# The rest decide what training the checkpoints hold (model, data, hyperparameters, world size,
# device): a checkpoint directory records their hash (ownership.py), and a job whose fields
# differ does not resume from another job's checkpoints unless it opts in.
TRAINING_FIELDS: tuple[str, ...] = tuple(path for path in IMMUTABLE_FIELDS if path not in PLACEMENT_FIELDS)


def default_sharding_strategy(nnodes: int, nproc_per_node: int) -> str:
    """FSDP sharding when the user names none.

    HYBRID_SHARD shards inside a node and replicates across nodes; with one GPU per node that
    would replicate the whole model on every GPU, so shard fully across nodes instead.
    """
    if nnodes > 1 and nproc_per_node == 1:
        return "FULL_SHARD"
    return "HYBRID_SHARD"


class SFTJobSpec(ApiModel):
    """One supervised fine-tuning run: training_hub sft() (instructlab-training) or osft()
    (mini-trainer) parameters."""

    algorithm: Algorithm = Field(
        default=Algorithm.SFT,
        description="sft: instructlab-training (training_hub sft()); osft: Orthogonal Subspace Fine-Tuning with "
        "rhai-innovation-mini-trainer (training_hub osft()), which needs unfreezeRankRatio. Each refuses the "
        "other's own fields.",
    )

    # --- training_hub sft() parameters --------------------------------------------------------
    model_path: str = Field(
        min_length=1,
        max_length=2048,
        description="hf://<org>/<repo>[@<revision>] (or a bare Hugging Face id), s3://<bucket>/<prefix>, or an absolute "
        "path in the pod. Remote models are fetched once per job onto the volume (docs/data.md).",
    )
    data_path: str = Field(
        min_length=1,
        max_length=2048,
        description="Training data (JSONL): hf://datasets/<org>/<repo>[@<revision>]/<file>, s3://<bucket>/<key>, "
        "https://<host>/<path>, or an absolute path in the pod. Remote data is fetched once per job.",
    )
    data_output_dir: str | None = Field(
        default=None, description="Where processed data goes; defaults to <checkpoint dir>/data."
    )
    num_epochs: int = Field(ge=1, description="Epochs over the data. Resume needs the same value, hence immutable.")
    effective_batch_size: int = Field(ge=1, description="Samples per optimizer step, across all GPUs.")
    learning_rate: float = Field(gt=0, description="Peak learning rate (after warmup).")
    max_seq_len: int = Field(ge=1, description="Longer samples are dropped during data processing.")
    max_tokens_per_gpu: int | None = Field(
        default=None, ge=1, description="Token cap per GPU mini-batch (max_batch_len); defaults to maxSeqLen."
    )
    warmup_steps: int = Field(default=0, ge=0, description="Linear learning-rate warmup steps.")
    save_samples: int = Field(default=0, ge=0, description="Checkpoint every N samples; 0 disables.")
    checkpoint_at_epoch: bool = Field(
        default=True,
        description="Save a Hugging Face checkpoint after each epoch. Off, no full state is saved at epoch ends "
        "either (instructlab-training saves it with the epoch's checkpoint).",
    )
    accelerate_full_state_at_epoch: bool = Field(
        default=True,
        description="Save the full training state each epoch: needed for exact resume. Only with checkpointAtEpoch.",
    )
    beta1: float = Field(default=0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(default=0.95, ge=0, lt=1, description="AdamW beta2.")
    eps: float = Field(default=1e-8, ge=0, description="AdamW epsilon.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    is_pretraining: bool = Field(default=False, description="Document-style continual pretraining.")
    block_size: int | None = Field(default=None, ge=1, description="Token block size; required when isPretraining.")
    document_column_name: str | None = Field(
        default=None,
        min_length=1,
        description="Column with the raw documents when isPretraining (library default: document).",
    )
    validation_split: float = Field(
        default=0.0, ge=0, lt=1, description="Fraction of the data held out for validation."
    )
    validation_frequency: int | None = Field(
        default=None, ge=1, description="Validate every N steps; required when validationSplit > 0."
    )
    mlflow_tracking_uri: str | None = Field(default=None, description="MLflow server; enables the MLflow logger.")
    mlflow_experiment_name: str | None = None
    mlflow_run_name: str | None = None
    wandb_project: str | None = Field(default=None, description="Weights & Biases project; enables the W&B logger.")
    wandb_entity: str | None = None
    wandb_run_name: str | None = None
    tensorboard_log_dir: str | None = Field(
        default=None, description="Enables the TensorBoard logger (a path in the pod)."
    )
    # --- training_hub osft() parameters (algorithm: osft only) --------------------------------
    unfreeze_rank_ratio: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="OSFT: the fraction of each target matrix's rank that trains (the rest is frozen); required "
        "with algorithm osft. Values above 0.5 are seldom needed.",
    )
    target_patterns: list[str] | None = Field(
        default=None,
        max_length=64,
        description="OSFT: module name patterns to apply OSFT to (default: mini-trainer's per-model defaults).",
    )
    seed: int | None = Field(default=None, ge=0, description="OSFT: random seed (mini-trainer default 42).")
    lr_scheduler: str | None = Field(
        default=None, min_length=1, description="OSFT: a transformers scheduler name (mini-trainer default cosine)."
    )
    lr_scheduler_kwargs: dict[str, Any] | None = Field(
        default=None, max_length=32, description="OSFT: extra arguments of the learning-rate scheduler."
    )
    save_final_checkpoint: bool | None = Field(
        default=None, description="OSFT: save a Hugging Face checkpoint when training ends (mini-trainer default true)."
    )
    use_liger: bool | None = Field(default=None, description="OSFT: Liger kernels (GPU only).")

    extra_args: dict[str, Any] = Field(
        default_factory=dict,
        max_length=64,
        description="Other instructlab-training TrainingArgs fields, by their Python names "
        "(e.g. keep_last_checkpoint_only, fsdp_options). Unknown names are rejected.",
    )

    # --- topology -----------------------------------------------------------------------------
    nnodes: int = Field(default=1, ge=1, description="Pods (nodes) in the torchrun job.")
    nproc_per_node: int = Field(default=1, ge=1, description="Processes (GPUs) per pod.")
    rdzv_port: int = Field(default=contract.DEFAULT_RDZV_PORT, ge=1, le=65535)
    rdzv_id: str | None = Field(default=None, min_length=1, description="Rendezvous id; defaults to the job's uid.")
    device: Device = Field(default=Device.CUDA, description="cuda for real training; cpu for tests and smoke runs.")

    # --- operation ----------------------------------------------------------------------------
    checkpoints: CheckpointVolume = Field(
        description="The volume the checkpoints live on; outlives the job by default."
    )
    remote: RemoteAccess | None = Field(
        default=None, description="Credentials and endpoints for hf:// and s3:// sources and the export; the cache."
    )
    export: ExportTarget | None = Field(default=None, description="Upload complete checkpoints to object storage.")
    pod: PodSettings = Field(default_factory=PodSettings, description="Settings of the training pods.")
    scheduling: Scheduling | None = Field(
        default=None, description="Gang scheduling and the Kueue queue of the job's pods."
    )
    suspend: bool = Field(default=False, description="true scales the job to zero pods; false resumes it.")
    max_restarts: int = Field(
        default=3,
        ge=0,
        description="Failures (restarts that lost work) allowed before the job is Failed; preemptions never count.",
    )
    full_state_retention: int | None = Field(
        default=None, ge=1, description="Keep only the last K complete full_state checkpoints; unset keeps all."
    )

    # --- run policy (mutable) -----------------------------------------------------------------
    active_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        description="Fail the job (DeadlineExceeded) once it has run this long since it started or was last "
        "resumed; the pods get SIGTERM first, so an on-demand checkpoint is saved. Unset: no deadline.",
    )
    startup_timeout_seconds: int = Field(
        default=1800,
        ge=1,
        description="Fail the job (StartupTimeout, with the blocking pod's reason) when not every pod runs this "
        "long after the job was created, resumed or lost a pod.",
    )
    stall_timeout_seconds: int | None = Field(
        default=None,
        ge=60,
        description="Restart every rank (reason Stalled; counts against maxRestarts) when the job trains but no "
        "new step reached the metrics log for this long (before a run's first step and while saving: the longer "
        "of this and startupTimeoutSeconds). Data processing is exempt (the launcher's watchdog bounds it). "
        "Unset: off.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        description="Delete the SFTJob this long after it Succeeded or Failed; the checkpoints follow "
        "checkpoints.deleteWithJob. Unset: kept.",
    )

    @model_validator(mode="after")
    def _cross_field_rules(self) -> SFTJobSpec:
        problems = cross_field_problems(self)
        if problems:
            raise PydanticCustomError(
                "sft_spec", "{summary}", {"summary": "; ".join(f"{p}: {m}" for p, m in problems), "problems": problems}
            )
        return self

    # --- derived values -----------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @property
    def ckpt_output_dir(self) -> str:
        return posixpath.normpath(posixpath.join(contract.CHECKPOINT_MOUNT_PATH, self.checkpoints.path or ""))

    def checkpoint_access_modes(self) -> list[str]:
        claim = self.checkpoints.claim
        if claim is not None and claim.access_modes:
            return [m.value for m in claim.access_modes]
        return [AccessMode.READ_WRITE_MANY.value if self.nnodes > 1 else AccessMode.READ_WRITE_ONCE.value]

    def training_args(self) -> dict[str, Any]:
        """instructlab-training TrainingArgs kwargs, mapped from the spec as training_hub does."""
        fetched = {field: path for field, _, path in self.fetched_sources()}
        args: dict[str, Any] = {
            "model_path": fetched.get("spec.modelPath", self.model_path),
            "data_path": fetched.get("spec.dataPath", self.data_path),
            "ckpt_output_dir": self.ckpt_output_dir,
            "data_output_dir": self.data_output_dir or posixpath.join(self.ckpt_output_dir, "data"),
            "num_epochs": self.num_epochs,
            "effective_batch_size": self.effective_batch_size,
            "learning_rate": self.learning_rate,
            "max_seq_len": self.max_seq_len,
            "max_batch_len": self.max_tokens_per_gpu or self.max_seq_len,
            "warmup_steps": self.warmup_steps,
            "save_samples": self.save_samples,
            "checkpoint_at_epoch": self.checkpoint_at_epoch,
            "accelerate_full_state_at_epoch": self.accelerate_full_state_at_epoch,
            "adamw_betas": [self.beta1, self.beta2],
            "adamw_eps": self.eps,
            "adamw_weight_decay": self.weight_decay,
            "validation_split": self.validation_split,
        }
        if self.validation_frequency is not None:
            args["validation_frequency"] = self.validation_frequency
        if self.is_pretraining:
            pretraining: dict[str, Any] = {"block_size": self.block_size}
            if self.document_column_name is not None:
                pretraining["document_column_name"] = self.document_column_name
            args["pretraining_config"] = pretraining
        for name in LOGGER_FIELDS:
            value = getattr(self, name)
            if value is not None:
                args[name] = value
        extra = dict(self.extra_args)
        fsdp_options = dict(extra.pop("fsdp_options", None) or {})
        fsdp_options.setdefault("sharding_strategy", default_sharding_strategy(self.nnodes, self.nproc_per_node))
        args["fsdp_options"] = fsdp_options
        args.update(extra)
        return args

    @property
    def source_cache_root(self) -> str:
        """Where fetched sources are cached, in the pod: the cache claim, or the checkpoint volume's
        root (not the job's directory in it: jobs sharing a claim share the cache)."""
        if self.remote is not None and self.remote.cache_claim is not None:
            return contract.SOURCE_CACHE_CLAIM_MOUNT_PATH
        return posixpath.join(contract.CHECKPOINT_MOUNT_PATH, contract.SOURCE_CACHE_DIR)

    def fetched_sources(self) -> list[tuple[str, sources.Source, str]]:
        """(spec path, source, where the trainer reads it) for modelPath/dataPath values that are
        remote. Call on a validated spec (cross_field_problems refuses what does not parse)."""
        fetched = []
        for field, value, model in (
            ("spec.modelPath", self.model_path, True),
            ("spec.dataPath", self.data_path, False),
        ):
            if sources.is_remote(value):
                source = sources.parse_source(value, model=model)
                fetched.append((field, source, source.local_path(self.source_cache_root)))
        return fetched

    @property
    def needs_transfer(self) -> bool:
        """Whether the pods carry the transfer sidecar (something to fetch, restore or export)."""
        return bool(self.fetched_sources()) or self.export is not None

    def transfer_config(self) -> dict[str, Any]:
        """The training config's keys for the transfer sidecar and the launcher's wait."""
        config: dict[str, Any] = {}
        fetched = self.fetched_sources()
        if fetched:
            config[contract.CONFIG_KEY_SOURCES] = [
                {"field": field, "uri": source.uri, "cacheKey": source.cache_key, "localPath": path}
                for field, source, path in fetched
            ]
            config[contract.CONFIG_KEY_SOURCE_CACHE_ROOT] = self.source_cache_root
        if self.export is not None:
            config[contract.CONFIG_KEY_EXPORT] = {
                "uri": self.export.uri,
                "fullStates": self.export.full_states,
                "restore": self.export.restore,
            }
        return config

    def training_config(self, job_name: str, namespace: str, job_uid: str = "") -> dict[str, Any]:
        """The launcher's config file (contract.CONFIG_FILE_NAME), as documented in contract.py."""
        uid = {contract.CONFIG_KEY_JOB_UID: job_uid} if job_uid else {}
        if self.algorithm is Algorithm.OSFT:
            fetched = {field: path for field, _, path in self.fetched_sources()}
            training_args = osft_training_args(
                self,
                self.ckpt_output_dir,
                OSFT_LOGGER_FIELDS,
                model_path=fetched.get("spec.modelPath", self.model_path),
                data_path=fetched.get("spec.dataPath", self.data_path),
            )
            # Written only for OSFT: an SFT job's config (and its hash in the StatefulSet) stays as it was.
            uid[contract.CONFIG_KEY_ALGORITHM] = Algorithm.OSFT.value
        else:
            training_args = self.training_args()
        return {
            **self.transfer_config(),
            **uid,
            contract.CONFIG_KEY_JOB_NAME: job_name,
            contract.CONFIG_KEY_NAMESPACE: namespace,
            contract.CONFIG_KEY_NUM_EPOCHS: self.num_epochs,
            contract.CONFIG_KEY_RETENTION: self.full_state_retention,
            contract.CONFIG_KEY_TRAINING_ARGS: training_args,
            contract.CONFIG_KEY_TRAINING_FIELDS: self.training_fields_view(),
            contract.CONFIG_KEY_ADOPT_EXISTING: self.checkpoints.adopt_existing,
        }

    def immutable_view(self) -> dict[str, Any]:
        """The values of IMMUTABLE_FIELDS, keyed by their spec path (absent optionals as None)."""
        api = self.to_api()
        view: dict[str, Any] = {}
        for path in IMMUTABLE_FIELDS:
            value: Any = api
            for part in path.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            view[path] = value
        return view

    def training_fields_view(self) -> dict[str, Any]:
        """The TRAINING_FIELDS part of the immutable view: what a checkpoint directory's owner
        record hashes (defaults included, so leaving a field out equals writing its default)."""
        view = self.immutable_view()
        fields = {path: view[path] for path in TRAINING_FIELDS}
        if self.algorithm is Algorithm.SFT:
            # An SFT job's hash is what it was before OSFT existed: the directories of jobs created
            # then keep their owner.
            for path in ("algorithm", *OSFT_ONLY_FIELDS):
                del fields[path]
        return fields


def epoch_full_state_warning(spec: dict[str, Any]) -> str | None:
    """A valid spec (the API form) that silently loses the resume points users expect:
    instructlab-training saves the epoch's full state only inside its epoch checkpoint, so
    checkpointAtEpoch: false turns accelerateFullStateAtEpoch off too. Said, not refused:
    training_hub's sft() accepts the pair."""
    if spec.get("algorithm") == Algorithm.OSFT.value:
        return None  # mini-trainer has no epoch full states: nothing is lost
    if spec.get("checkpointAtEpoch") is False and spec.get("accelerateFullStateAtEpoch", True) is not False:
        return (
            "spec.checkpointAtEpoch: false also stops the full state saved at each epoch end "
            "(spec.accelerateFullStateAtEpoch has no effect without it): a restart resumes only from the "
            "full state saved on SIGTERM, else starts over. Set spec.accelerateFullStateAtEpoch: false to "
            "say so, or leave spec.checkpointAtEpoch on"
        )
    return None


def cross_field_problems(spec: SFTJobSpec) -> list[tuple[str, str]]:
    """(spec path, message) for every rule that spans fields; the CRD's CEL rules mirror these."""
    problems: list[tuple[str, str]] = algorithm_problems(spec)
    for key in spec.extra_args:
        path = f"spec.extraArgs.{key}"
        if key not in TRAINING_ARGS_FIELDS:
            problems.append((path, "unknown instructlab-training argument"))
        elif key in UNSERIALIZABLE_FIELDS:
            problems.append((path, "cannot be set from a manifest (it takes Python objects)"))
        elif key in MAPPED_TRAINING_ARGS:
            problems.append((path, f"set by the operator from spec.{MAPPED_TRAINING_ARGS[key]}; use that field"))
    if spec.validation_split > 0 and spec.validation_frequency is None:
        problems.append(("spec.validationFrequency", "required when spec.validationSplit > 0"))
    if spec.is_pretraining and spec.block_size is None:
        problems.append(("spec.blockSize", "required when spec.isPretraining is true"))
    if spec.effective_batch_size < spec.world_size:
        problems.append(
            (
                "spec.effectiveBatchSize",
                f"must be at least nnodes * nprocPerNode = {spec.world_size} (one sample per GPU per step)",
            )
        )
    if spec.max_tokens_per_gpu is not None and spec.max_tokens_per_gpu < spec.max_seq_len:
        problems.append(("spec.maxTokensPerGpu", "must be at least spec.maxSeqLen (one full sequence per GPU)"))
    volume = spec.checkpoints
    if (volume.existing_claim is None) == (volume.claim is None):
        problems.append(("spec.checkpoints", "set exactly one of existingClaim or claim"))
    if (
        spec.nnodes > 1
        and volume.claim is not None
        and volume.claim.access_modes
        and AccessMode.READ_WRITE_MANY not in volume.claim.access_modes
    ):
        problems.append(
            (
                "spec.checkpoints.claim.accessModes",
                "nnodes > 1 needs ReadWriteMany: every rank reads full_state/ when it resumes",
            )
        )
    for field, location, model in (("spec.modelPath", spec.model_path, True), ("spec.dataPath", spec.data_path, False)):
        if sources.is_remote(location):
            try:
                sources.parse_source(location, model=model)
            except sources.SourceProblem as exc:
                problems.append((field, str(exc)))
    if spec.export is not None:
        try:
            sources.parse_export_uri(spec.export.uri)
        except sources.SourceProblem as exc:
            problems.append(("spec.export.uri", str(exc)))
        if spec.export.restore and not spec.export.full_states:
            problems.append(
                ("spec.export.restore", "needs spec.export.fullStates: only exported full states can be restored")
            )
    if volume.path is not None and (volume.path.startswith("/") or ".." in volume.path.split("/")):
        problems.append(("spec.checkpoints.path", "must be a relative path inside the volume, without '..'"))
    for i, var in enumerate(spec.pod.env):
        if var.name in RESERVED_ENV:
            problems.append((f"spec.pod.env[{i}].name", f"{var.name} is set by the operator"))
        value = (var.model_extra or {}).get("value")
        if (
            var.name == COLLECTIVE_TIMEOUT_ENV
            and value is not None
            and not re.match(POSITIVE_INTEGER_PATTERN, str(value))
        ):
            problems.append(
                (
                    f"spec.pod.env[{i}].value",
                    f"{COLLECTIVE_TIMEOUT_ENV} must be a positive integer (milliseconds), got {value!r}",
                )
            )
    for i, volume_def in enumerate(spec.pod.volumes):
        if volume_def.name in RESERVED_VOLUMES:
            problems.append((f"spec.pod.volumes[{i}].name", f"{volume_def.name} is reserved by the operator"))
    for i, mount in enumerate(spec.pod.volume_mounts):
        if mount.mount_path in RESERVED_MOUNT_PATHS:
            problems.append((f"spec.pod.volumeMounts[{i}].mountPath", f"{mount.mount_path} is used by the operator"))
    problems += pod_security.annotation_problems(spec.pod.annotations, "spec.pod.annotations")
    problems += gpu_request_problems(spec)
    gang = spec.scheduling.gang if spec.scheduling is not None else None
    if gang is not None:
        if gang.schedule_timeout_seconds is not None and gang.provider is not GangProvider.COSCHEDULING:
            problems.append(("spec.scheduling.gang.scheduleTimeoutSeconds", "only for provider coscheduling"))
        if gang.queue is not None and gang.provider is not GangProvider.VOLCANO:
            problems.append(("spec.scheduling.gang.queue", "only for provider volcano"))
        wanted = gang.effective_scheduler_name
        if spec.pod.scheduler_name is not None and spec.pod.scheduler_name != wanted:
            problems.append(
                (
                    "spec.pod.schedulerName",
                    f"must be unset or {wanted!r} with spec.scheduling.gang (set "
                    "spec.scheduling.gang.schedulerName to use another scheduler)",
                )
            )
    return problems


def gpu_request_problems(spec: SFTJobSpec) -> list[tuple[str, str]]:
    """A user-set nvidia.com/gpu must be what the job uses: nprocPerNode GPUs with device cuda
    (fewer cannot start nprocPerNode processes, more are held idle), none with device cpu (CPU
    mode empties CUDA_VISIBLE_DEVICES: requested GPUs would be held and never used)."""
    resources = spec.pod.resources
    if resources is None:
        return []
    problems = []
    for kind, quantities in (("limits", resources.limits), ("requests", resources.requests)):
        if GPU_RESOURCE not in quantities:
            continue
        value = quantities[GPU_RESOURCE]
        path = f"spec.pod.resources.{kind}[{GPU_RESOURCE}]"
        if spec.device is Device.CPU:
            if str(value) != "0":
                problems.append(
                    (
                        path,
                        f"{value} with spec.device cpu: CPU mode uses no GPU (it empties "
                        "CUDA_VISIBLE_DEVICES), the GPUs would be held unused; remove it, or set "
                        "spec.device: cuda",
                    )
                )
        elif str(value) != str(spec.nproc_per_node):
            problems.append(
                (
                    path,
                    f"{value} differs from spec.nprocPerNode ({spec.nproc_per_node}): each process "
                    "uses one GPU; leave it out (the operator requests nprocPerNode GPUs) or change "
                    "spec.nprocPerNode",
                )
            )
    return problems


QUEUE_LABEL_PATH = f"metadata.labels[{KUEUE_QUEUE_LABEL}]"


def queue_label_problems(labels: dict[str, str], spec: SFTJobSpec | None) -> list[tuple[str, str]]:
    """The kueue.x-k8s.io/queue-name label on the SFTJob: a valid queue name, and the same queue as
    spec.scheduling.queueName when both are set."""
    label = labels.get(KUEUE_QUEUE_LABEL)
    if label is None:
        return []
    if not re.match(QUEUE_NAME_PATTERN, label) or len(label) > QUEUE_NAME_MAX_LENGTH:
        return [
            (
                QUEUE_LABEL_PATH,
                f"{label!r} is not a queue name (lowercase letters, digits, '-', '.'; "
                f"at most {QUEUE_NAME_MAX_LENGTH} characters)",
            )
        ]
    in_spec = spec.scheduling.queue_name if spec is not None and spec.scheduling is not None else None
    if in_spec is not None and in_spec != label:
        return [
            (
                "spec.scheduling.queueName",
                f"{in_spec!r} differs from the {KUEUE_QUEUE_LABEL} label on the SFTJob ({label!r}): set one of "
                "them, or the same queue in both",
            )
        ]
    return []


def with_queue_label(spec: SFTJobSpec, labels: dict[str, str]) -> SFTJobSpec:
    """The spec with the SFTJob's kueue.x-k8s.io/queue-name label as spec.scheduling.queueName when
    the spec names no queue: from here on (render, immutability) there is one source."""
    label = labels.get(KUEUE_QUEUE_LABEL)
    scheduling = spec.scheduling or Scheduling()
    if label is None or scheduling.queue_name is not None:
        return spec
    return spec.model_copy(update={"scheduling": scheduling.model_copy(update={"queue_name": label})})


def job_name_problems(name: str) -> list[tuple[str, str]]:
    problems = []
    if len(name) > MAX_JOB_NAME_LENGTH:
        problems.append(
            ("metadata.name", f"at most {MAX_JOB_NAME_LENGTH} characters (the StatefulSet's pods need the rest)")
        )
    if not re.match(JOB_NAME_PATTERN, name):
        problems.append(
            ("metadata.name", "must be a DNS-1035 label (lowercase letters, digits, '-'; starts with a letter)")
        )
    return problems


# --- status -----------------------------------------------------------------------------------


class Phase(str, enum.Enum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class ConditionType(str, enum.Enum):
    SPEC_VALID = "SpecValid"  # False: InvalidSpec (no children) or ImmutableFieldChanged
    READY = "Ready"  # all nnodes pods are running
    SUSPENDED = "Suspended"
    COMPLETE = "Complete"  # the launcher's completion marker is on the volume
    FAILED = "Failed"
    CHECKPOINT_VOLUME = "CheckpointVolume"  # the checkpoint claim exists and can serve every node
    QUEUED = "Queued"  # a scheduling gate (a queue: Kueue) holds a pod back; present once it happened
    EXPORTED = "Exported"  # spec.export: True once the final checkpoint is uploaded; False while pending or failing


class Reason(str, enum.Enum):
    VALID = "Valid"
    INVALID_SPEC = "InvalidSpec"
    IMMUTABLE_FIELD_CHANGED = "ImmutableFieldChanged"
    ALL_NODES_RUNNING = "AllNodesRunning"
    NODES_PENDING = "NodesPending"
    SUSPENDED = "Suspended"
    NOT_SUSPENDED = "NotSuspended"
    TRAINING_COMPLETED = "TrainingCompleted"
    TOO_MANY_RESTARTS = "TooManyRestarts"  # trainer restarts exceeded spec.maxRestarts
    CONFIG_REJECTED = "ConfigRejected"  # the launcher exited EXIT_BAD_CONFIG: a retry cannot help
    RENDEZVOUS_CONFLICT = "RendezvousConflict"  # exit 5: another job holds this job's rendezvous port
    DEADLINE_EXCEEDED = "DeadlineExceeded"  # ran past spec.activeDeadlineSeconds
    STARTUP_TIMEOUT = "StartupTimeout"  # not every pod ran within spec.startupTimeoutSeconds
    STALLED = "Stalled"  # no training step for spec.stallTimeoutSeconds: every rank restarted
    FINISHED = "Finished"  # Ready is False because training is over
    CLAIM_FOUND = "Found"
    CLAIM_NOT_FOUND = "ClaimNotFound"
    CLAIM_NOT_READ_WRITE_MANY = "NotReadWriteMany"  # an existing claim a multi-node job cannot share
    SCHEDULING_GATED = "SchedulingGated"  # Queued True: waiting for the queue; the start-up timeout waits too
    NOT_GATED = "NotGated"  # Queued False: no gate holds a pod back (admitted, or suspended)
    DOWNLOAD_FAILED = "DownloadFailed"  # a remote source cannot be fetched (missing, refused): a retry cannot help
    DOWNLOAD_RETRYING = "DownloadRetrying"  # Ready False: a download failed and is retried
    EXPORTED = "Exported"
    EXPORT_PENDING = "ExportPending"  # training is over; the final checkpoint's upload is not done
    EXPORT_FAILING = "ExportFailing"  # an upload failed and is retried with backoff


# Failed for one of these is for good (scaled to 0, never restarted); Failed for InvalidSpec is not:
# fixing the spec starts the job.
TRAINING_OVER_REASONS = frozenset(
    reason.value
    for reason in (
        Reason.TOO_MANY_RESTARTS,
        Reason.CONFIG_REJECTED,
        Reason.RENDEZVOUS_CONFLICT,
        Reason.DEADLINE_EXCEEDED,
        Reason.STARTUP_TIMEOUT,
        Reason.DOWNLOAD_FAILED,
    )
)


class Condition(ApiModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str | None = None
    last_transition_time: str = Field(json_schema_extra={"format": "date-time"})
    observed_generation: int | None = None


class NodeRestarts(ApiModel):
    """How one node's trainer ended, counted once per termination (the pods that show it come
    and go: a recreated pod starts again at restartCount 0)."""

    model_config = ConfigDict(extra="ignore")

    node: int = Field(ge=0, description="The node rank (pod ordinal).")
    failures: int = Field(default=0, ge=0, description="Terminations that lost work (crash, OOM, exit 1, ...).")
    preemptions: int = Field(
        default=0, ge=0, description="Clean stops: exit 3 after an on-demand checkpoint, or the pod was deleted."
    )
    last_exit_code: int | None = None
    last_exit_time: str | None = Field(
        default=None,
        json_schema_extra={"format": "date-time"},
        description="finishedAt of the newest termination counted (older ones are never counted again).",
    )


class RestartBackoff(ApiModel):
    """A group restart the operator has decided on and holds back until nextRestartAt: the n-th
    restart that lost work waits 10 s doubling to 5 minutes after its cause (none for the first)."""

    model_config = ConfigDict(extra="ignore")

    reason: str = Field(description="RanksLeftBehind (a rank failed; the others still run) or Stalled.")
    restart: int = Field(ge=1, description="Which restart it will be, counted as status.restarts counts.")
    delay_seconds: int = Field(
        ge=0,
        description="The backoff: from the failure's end, or from when the job counted as stalled, to the restart.",
    )
    next_restart_at: str = Field(json_schema_extra={"format": "date-time"})
    ranks: list[str] = Field(
        default_factory=list, description="The pods to be restarted (RanksLeftBehind): every rank, the failed one too."
    )


class SFTJobStatus(ApiModel):
    """Written only by the operator."""

    # Unknown fields are ignored: a newer operator (a rollback, or a newer client reading) may have
    # written fields this version does not know.
    model_config = ConfigDict(extra="ignore")

    phase: Phase = Phase.PENDING
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    ready_nodes: int = 0
    total_nodes: int = 0
    nodes: str | None = Field(default=None, description="readyNodes/totalNodes, for kubectl get")
    start_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    completion_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    restarts: int = Field(
        default=0, description="Restarts that lost work (the most of any node); counted against spec.maxRestarts."
    )
    preemptions: int = Field(
        default=0, description="Clean stops that resume exactly (the most of any node); never fail the job."
    )
    node_restarts: list[NodeRestarts] = Field(default_factory=list, description="Per node: how its trainer ended.")
    stall_restarts: int = Field(
        default=0,
        description="Times every rank was restarted because no training step came (spec.stallTimeoutSeconds).",
    )
    restart_backoff: RestartBackoff | None = Field(
        default=None, description="A group restart held back by the backoff between restarts; unset otherwise."
    )

    # --- progress and checkpoints, read from the checkpoint volume by the reporter sidecar ---
    progress: TrainingProgress | None = Field(
        default=None, description="How far training is and which checkpoints exist (from the checkpoint volume)."
    )

    @property
    def training_over(self) -> bool:
        """Succeeded, or Failed by training (not by a spec the user can still fix): the job's pods
        stay at 0 for good, also across operator restarts (this is read back from the status)."""
        if self.phase is Phase.SUCCEEDED:
            return True
        failed = next((c for c in self.conditions if c.type == ConditionType.FAILED.value), None)
        return (
            self.phase is Phase.FAILED
            and failed is not None
            and failed.status == "True"
            and failed.reason in TRAINING_OVER_REASONS
        )


# --- the object -------------------------------------------------------------------------------


class ObjectMeta(ApiModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    namespace: str = "default"
    uid: str = ""
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    deletion_timestamp: str | None = None


class SFTJob(ApiModel):
    model_config = ConfigDict(extra="ignore")

    # contract's constants are plain str (API_VERSION is built from GROUP and VERSION); the Literal
    # is what the schema pins.
    api_version: Literal["finetune.dev/v1alpha1"] = contract.API_VERSION  # type: ignore[assignment]  # see above
    kind: Literal["SFTJob"] = contract.KIND  # type: ignore[assignment]  # see above
    metadata: ObjectMeta
    spec: SFTJobSpec
    status: SFTJobStatus | None = None

    @property
    def rdzv_id(self) -> str:
        return self.spec.rdzv_id or self.metadata.uid


# --- errors -----------------------------------------------------------------------------------


class InvalidSpecError(ValueError):
    """A spec the operator will not run; each problem names its field by spec path."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{path}: {message}" for path, message in problems))


def describe_validation_error(exc: ValidationError, root: str = "spec") -> list[tuple[str, str]]:
    """pydantic errors as (spec path, message), e.g. ("spec.pod.image", "Field required")."""
    problems: list[tuple[str, str]] = []
    for error in exc.errors(include_url=False):
        if error["type"] == "sft_spec":
            problems.extend(error["ctx"]["problems"])
            continue
        path = root
        for item in error["loc"]:
            path += f"[{item}]" if isinstance(item, int) else f".{item}"
        problems.append((path, error["msg"]))
    return problems


def parse_spec(spec: Any) -> SFTJobSpec:
    """Validate a spec from the API; raises InvalidSpecError naming every bad field."""
    try:
        return SFTJobSpec.model_validate(spec if spec is not None else {})
    except ValidationError as exc:
        raise InvalidSpecError(describe_validation_error(exc)) from None


def parse_job(body: dict[str, Any]) -> SFTJob:
    """Validate a whole SFTJob (name rules included); raises InvalidSpecError."""
    metadata = ObjectMeta.model_validate(body.get("metadata") or {})
    problems = job_name_problems(metadata.name)
    try:
        spec = parse_spec(body.get("spec"))
    except InvalidSpecError as exc:
        problems += exc.problems + queue_label_problems(metadata.labels, None)
        raise InvalidSpecError(problems) from None
    problems += queue_label_problems(metadata.labels, spec)
    if problems:
        raise InvalidSpecError(problems)
    status = body.get("status")
    return SFTJob(
        metadata=metadata,
        spec=with_queue_label(spec, metadata.labels),
        status=SFTJobStatus.model_validate(status) if status else None,
    )
