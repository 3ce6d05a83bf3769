"""The contract between the operator (render.py) and the launcher in each pod.

One set of names, imported by both sides; the README's env-contract table documents them.
This module must stay dependency-free: the trainer image imports it without kopf or kubernetes.
"""

from __future__ import annotations

# --- API identity -----------------------------------------------------------------------------
GROUP = "finetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "SFTJob"
PLURAL = "sftjobs"
SINGULAR = "sftjob"
SHORT_NAMES = ["sft"]

# --- Labels and annotations on children -------------------------------------------------------
LABEL_JOB_NAME = f"{GROUP}/job-name"
LABEL_COMPONENT = f"{GROUP}/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "sft-operator"

# --- Environment read by the launcher ---------------------------------------------------------
# torchrun reads PET_* for any option not passed on its command line.
ENV_NNODES = "PET_NNODES"
ENV_NPROC_PER_NODE = "PET_NPROC_PER_NODE"
ENV_MASTER_ADDR = "PET_MASTER_ADDR"
ENV_MASTER_PORT = "PET_MASTER_PORT"
ENV_RDZV_ENDPOINT = "PET_RDZV_ENDPOINT"
ENV_RDZV_ID = "PET_RDZV_ID"
# Set by the launcher (never by the operator): derived from the pod name's ordinal, since the
# apps.kubernetes.io/pod-index label exists only on Kubernetes >= 1.28.
ENV_NODE_RANK = "PET_NODE_RANK"
# The pod's own name, from the downward API (metadata.name), e.g. "myjob-1" -> node rank 1.
ENV_POD_NAME = "SFT_POD_NAME"
# Path of the training config (JSON) mounted from the job's ConfigMap.
ENV_CONFIG_PATH = "SFT_CONFIG"
# "cuda" (default, production) or "cpu" (tests and small smoke runs only).
ENV_DEVICE = "SFT_DEVICE"
# Both containers: the pod-state emptyDir (POD_STATE_MOUNT_PATH). The launcher removes
# TRAINER_EXITED_FILE there and writes TRAINER_RUNNING_FILE when it starts, and writes
# TRAINER_EXITED_FILE as its very last act; pod 0's reporter, told to stop while a trainer runs,
# keeps publishing until it exits, so the trainer's last save reaches the status. No trainer
# started in the pod (an image that cannot be pulled): nothing to wait for.
ENV_POD_STATE_DIR = "SFT_POD_STATE_DIR"
# Reporter: the pod's terminationGracePeriodSeconds, the bound on that wait (less a margin).
ENV_TERMINATION_GRACE_SECONDS = "SFT_TERMINATION_GRACE_SECONDS"
TRAINER_EXITED_FILE = "trainer-exited"
TRAINER_RUNNING_FILE = "trainer-running"
# Where the launcher writes its one-line termination message (never set by the operator: the
# default is the container's terminationMessagePath, /dev/termination-log; tests point it away).
ENV_TERMINATION_LOG = "SFT_TERMINATION_LOG"

# --- Mounts in the training pod ---------------------------------------------------------------
CONFIG_MOUNT_PATH = "/etc/sft"
CONFIG_FILE_NAME = "training.json"
CONFIG_PATH = f"{CONFIG_MOUNT_PATH}/{CONFIG_FILE_NAME}"
CHECKPOINT_MOUNT_PATH = "/checkpoints"
SHM_MOUNT_PATH = "/dev/shm"
POD_STATE_MOUNT_PATH = "/run/sft-operator"

# --- Container and volume names ---------------------------------------------------------------
TRAINER_CONTAINER = "trainer"
# The transfer sidecar (trainer image, ``python -m sft_trainer.transfer``): fetches the job's
# remote sources once (pod 0), then exports complete checkpoints. The only container that sees
# the credentials' Secrets.
TRANSFER_CONTAINER = "transfer"
CHECKPOINT_VOLUME = "checkpoints"
CONFIG_VOLUME = "training-config"
SHM_VOLUME = "dshm"
POD_STATE_VOLUME = "pod-state"

DEFAULT_RDZV_PORT = 29500

# --- Remote sources and export (sources.py) --------------------------------------------------
# The source cache: the checkpoint volume's root, or the claim spec.remote.cacheClaim names
# (mounted here in the transfer and trainer containers).
SOURCE_CACHE_DIR = ".sft-sources"
SOURCE_CACHE_CLAIM_MOUNT_PATH = "/sft-source-cache"
SOURCE_CACHE_VOLUME = "source-cache"
# The transfer sidecar's scratch space (its root filesystem is read-only).
TRANSFER_TMP_VOLUME = "transfer-tmp"
# Transfer container only: where the credentials come from, by name, for messages such as
# "the token in Secret hf-token cannot read org/x" (the values come through envFrom).
ENV_HF_TOKEN_SECRET = "SFT_HF_TOKEN_SECRET"
ENV_S3_SECRET = "SFT_S3_SECRET"
# Hugging Face: huggingface_hub reads HF_TOKEN and HF_ENDPOINT itself.
ENV_HF_TOKEN = "HF_TOKEN"
ENV_HF_ENDPOINT = "HF_ENDPOINT"
# S3: boto3 reads these itself (AWS_ENDPOINT_URL since botocore 1.31).
ENV_S3_ENDPOINT = "AWS_ENDPOINT_URL"
ENV_S3_REGION = "AWS_REGION"

# --- The progress ConfigMap (reporter -> operator) -------------------------------------------
# The reporter patches its summary (progress.TrainingProgress as JSON) under this key of the
# job's progress ConfigMap; the operator folds it into status.progress.
PROGRESS_KEY = "progress.json"


def progress_configmap_name(job_name: str) -> str:
    return f"{job_name}-progress"


# --- Launcher exit codes ----------------------------------------------------------------------
EXIT_OK = 0  # finished (completion marker written) or idling after completion
EXIT_TRAINING_FAILED = 1  # instructlab-training / torchrun failed
EXIT_BAD_CONFIG = 2  # config or environment invalid: retrying will not help
EXIT_PREEMPTED = 3  # saved an on-demand checkpoint and stopped; a restart resumes
EXIT_PEER_UNAVAILABLE = 4  # node 0's data-ready marker or rendezvous endpoint never came; a
#                            restart may help
EXIT_RENDEZVOUS_CONFLICT = 5  # the rendezvous port is taken on node 0's pod, or the endpoint a
#                               node reached is another job's rendezvous (same rdzvPort on a
#                               shared network); a restart helps only once the other job is gone

# --- The training config (the ConfigMap's training.json) --------------------------------------
# {
#   "jobName": str, "namespace": str,
#   "numEpochs": int,
#   "fullStateRetention": int | null,   # keep the last K complete full_state/epoch_N dirs
#   "dataWaitTimeoutSeconds": number,   # optional (3600): nodes > 0 wait this long for data
#   "rendezvousTimeoutSeconds": number, # optional (600): rendezvous wait, both ours and torchrun's
#   "dataStallTimeoutSeconds": number,  # optional (300): node 0's data processing child is killed
#                                       # and retried after this long without progress
#   "dataProcessingAttempts": int,      # optional (3): attempts before giving up (exit 1)
#   "jobUid": str,                      # optional: the job's uid; with it the launcher records
#                                       # and checks the directory's owner (ownership.py)
#   "trainingFields": {...},            # the spec's training fields (models.TRAINING_FIELDS),
#                                       # hashed into the owner record
#   "adoptExistingCheckpoints": bool,   # spec.checkpoints.adoptExisting (default false)
#   "algorithm": "sft" | "osft",        # optional (sft); written only for osft
#   "trainingArgs": {...}               # sft: instructlab-training TrainingArgs kwargs, already
#                                       # mapped from the spec's camelCase names; includes
#                                       # ckpt_output_dir, data_path, model_path, num_epochs.
#                                       # osft: training_hub osft()'s parameter names (the
#                                       # launcher maps them onto mini-trainer's TrainingArgs)
# }
CONFIG_KEY_JOB_NAME = "jobName"
CONFIG_KEY_NAMESPACE = "namespace"
CONFIG_KEY_NUM_EPOCHS = "numEpochs"
CONFIG_KEY_RETENTION = "fullStateRetention"
CONFIG_KEY_TRAINING_ARGS = "trainingArgs"
CONFIG_KEY_DATA_WAIT_TIMEOUT = "dataWaitTimeoutSeconds"
CONFIG_KEY_RDZV_TIMEOUT = "rendezvousTimeoutSeconds"
CONFIG_KEY_DATA_STALL_TIMEOUT = "dataStallTimeoutSeconds"
CONFIG_KEY_DATA_ATTEMPTS = "dataProcessingAttempts"
CONFIG_KEY_JOB_UID = "jobUid"
CONFIG_KEY_TRAINING_FIELDS = "trainingFields"
CONFIG_KEY_ADOPT_EXISTING = "adoptExistingCheckpoints"
# Remote sources (optional): [{"field": "spec.modelPath", "uri": <canonical>, "cacheKey": str,
# "localPath": <where trainingArgs points>}, ...]; "sourceCacheRoot": the cache's path in the pod.
# The transfer sidecar fetches them (pod 0); every launcher waits for each one's COMPLETE.json.
CONFIG_KEY_SOURCES = "sources"
CONFIG_KEY_SOURCE_CACHE_ROOT = "sourceCacheRoot"
# Export (optional): {"uri": "s3://bucket/prefix", "fullStates": bool, "restore": bool}
CONFIG_KEY_EXPORT = "export"
CONFIG_KEY_ALGORITHM = "algorithm"


def node_rank_from_pod_name(pod_name: str) -> int:
    """A StatefulSet pod is named ``<statefulset>-<ordinal>``; the ordinal is the node rank."""
    _, sep, ordinal = pod_name.rpartition("-")
    if not sep or not ordinal.isdigit():
        raise ValueError(f"{ENV_POD_NAME}={pod_name!r} does not end in '-<ordinal>'")
    return int(ordinal)
