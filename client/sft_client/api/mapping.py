"""sft() parameters -> an SFTJob manifest (pure), validated by the models before anything is sent.

The training parameters are training_hub's ``sft()`` keyword arguments; the spec's training
fields carry the same names in camelCase (models.py), so most map one to one. The rest:

- ``ckpt_output_dir``, ``model_path``, ``data_path``, ... are placed on volumes (paths.py);
- ``nproc_per_node``/``nnodes``/``rdzv_id`` become the job's topology, ``master_port`` its
  rendezvous port; ``node_rank``, ``rdzv_endpoint`` and ``master_addr`` are the operator's to
  choose (one pod per node) and are refused rather than ignored;
- ``max_batch_len`` (training_hub's other name for ``max_tokens_per_gpu``) is accepted;
- ``checkpoint_storage`` is training_hub's remote checkpoint URI: ``s3://bucket/prefix`` becomes
  ``spec.export`` with full states and restore (the transfer sidecar uploads every complete
  checkpoint and, when the checkpoint directory is empty, restores the newest exported full
  state, as training_hub mirrors and restores); ``None``/``"pvc"`` is the claim alone; a claim
  size (this API's old meaning) is refused naming ``checkpoint_claim_size``.
  ``enable_jit_checkpoint`` is always on here;
- remote sources (``hf://``, ``s3://``, ``https://``, a bare Hugging Face id) pass through to
  ``spec.modelPath``/``spec.dataPath``; their Secrets, endpoints and cache claim are keyword
  arguments (``hf_token_secret``, ``s3_endpoint``, ...) that fill ``spec.remote``;
- the run policy has no training_hub names: its spec fields are keyword arguments under their
  own names (``active_deadline_seconds``, ...), and ``gang`` (a provider name, or the
  ``spec.scheduling.gang`` object) and ``queue_name`` (a Kueue LocalQueue) fill ``spec.scheduling``;
- any other keyword goes to ``spec.extraArgs`` and is checked there against instructlab-training's
  TrainingArgs, exactly as the operator checks it;
- what only a cluster needs (namespace, name, image, resources, ...) is a ClusterOptions field.

Every problem names the sft() parameter and, where there is one, the spec field, with the
operator's own message.
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass, fields
from typing import Any

from sft_client.api.paths import (
    POD_PATH_PARAMS,
    CheckpointPlacement,
    PathProblem,
    PathProblems,
    place_checkpoints,
    place_pod_paths,
)
from sft_core import contract, sources
from sft_models.models import (
    KUEUE_QUEUE_LABEL,
    MAX_JOB_NAME_LENGTH,
    QUANTITY_PATTERN,
    CheckpointVolume,
    ClaimTemplate,
    InvalidSpecError,
    PodSettings,
    SFTJobSpec,
    parse_job,
)

BACKEND_NAME = "instructlab-training"
# Our backend's name in training_hub's registry: sft(..., backend="kubernetes").
KUBERNETES_BACKEND_NAME = "kubernetes"

# training_hub sft()'s parameters, in its order (backend and callbacks included).
TRAINING_HUB_SFT_PARAMS: tuple[str, ...] = (
    "model_path",
    "data_path",
    "ckpt_output_dir",
    "backend",
    "num_epochs",
    "effective_batch_size",
    "learning_rate",
    "max_seq_len",
    "max_tokens_per_gpu",
    "data_output_dir",
    "save_samples",
    "warmup_steps",
    "accelerate_full_state_at_epoch",
    "checkpoint_at_epoch",
    "is_pretraining",
    "block_size",
    "document_column_name",
    "beta1",
    "beta2",
    "eps",
    "weight_decay",
    "nproc_per_node",
    "nnodes",
    "node_rank",
    "rdzv_id",
    "rdzv_endpoint",
    "master_addr",
    "master_port",
    "wandb_project",
    "wandb_entity",
    "wandb_run_name",
    "tensorboard_log_dir",
    "mlflow_tracking_uri",
    "mlflow_experiment_name",
    "mlflow_run_name",
    "callbacks",
    "enable_jit_checkpoint",
    "checkpoint_storage",
)

# torchrun settings that training_hub takes per machine; on the cluster the operator sets them.
OPERATOR_CHOSEN_TORCHRUN_PARAMS: dict[str, str] = {
    "node_rank": "each pod's rank comes from its ordinal; the operator starts one pod per node",
    "rdzv_endpoint": "the operator points every pod at pod 0 (use master_port to change the port)",
    "master_addr": "the operator points every pod at pod 0 (use master_port to change the port)",
}

# Spec fields that are not sft() training parameters: set from ClusterOptions or by mapping.
OPERATION_SPEC_FIELDS = frozenset(
    {
        "extra_args",
        "checkpoints",
        "pod",
        "suspend",
        "max_restarts",
        "full_state_retention",
        "device",
        "rdzv_port",
        "remote",
        "export",
    }
)
# Spec fields settable as sft() keyword arguments under their own (snake_case) names.
SPEC_PARAMS: tuple[str, ...] = tuple(name for name in SFTJobSpec.model_fields if name not in OPERATION_SPEC_FIELDS)
SPEC_ALIAS = {name: info.alias or name for name, info in SFTJobSpec.model_fields.items()}
POD_ALIAS = {name: info.alias or name for name, info in PodSettings.model_fields.items()}
CHECKPOINTS_ALIAS = {name: info.alias or name for name, info in CheckpointVolume.model_fields.items()}
CLAIM_ALIAS = {name: info.alias or name for name, info in ClaimTemplate.model_fields.items()}
PARAM_OF_ALIAS = {alias: name for name, alias in SPEC_ALIAS.items()}

# Spec paths set from something other than the parameter of the same name.
PARAM_OF_SPEC_PATH: dict[str, str] = {
    "spec.checkpoints.claim.size": "checkpoint_claim_size",
    "spec.checkpoints.claim.storageClassName": "storage_class",
    "spec.checkpoints.claim.accessModes": "checkpoint_claim_size",
    "spec.checkpoints.claim": "checkpoint_claim_size",
    "spec.checkpoints.deleteWithJob": "delete_checkpoints_with_job",
    "spec.checkpoints.adoptExisting": "adopt_existing_checkpoints",
    "spec.checkpoints": "ckpt_output_dir",
    "spec.remote.huggingFace.tokenSecret": "hf_token_secret",
    "spec.remote.huggingFace.endpoint": "hf_endpoint",
    "spec.remote.huggingFace": "hf_token_secret",
    "spec.remote.s3.credentialsSecret": "s3_credentials_secret",
    "spec.remote.s3.endpoint": "s3_endpoint",
    "spec.remote.s3.region": "s3_region",
    "spec.remote.s3": "s3_credentials_secret",
    "spec.remote.cacheClaim": "source_cache_claim",
    "spec.remote": "source_cache_claim",
    "spec.export.uri": "export_uri",
    "spec.export.fullStates": "export_full_states",
    "spec.export.restore": "checkpoint_storage",
    "spec.export": "export_uri",
    "spec.pod.image": "image",
    "spec.pod.resources": "resources",
    "spec.pod.env": "env",
    "spec.pod.volumes": "volumes",
    "spec.pod.volumeMounts": "volume_mounts",
    "spec.pod": "pod",
    "spec.rdzvPort": "master_port",
    "spec.device": "device",
    "spec.maxRestarts": "max_restarts",
    "spec.fullStateRetention": "full_state_retention",
    "spec.suspend": "suspend",
    "spec.scheduling.queueName": "queue_name",
    "spec.scheduling.gang": "gang",
    "metadata.name": "name",
    f"metadata.labels[{KUEUE_QUEUE_LABEL}]": "labels",
}

JOB_NAME_PREFIX = "sft-"
JOB_NAME_SUFFIX_LENGTH = 5
# What is left of a job name for the model's slug: the name's limit minus the prefix and "-<suffix>".
MAX_MODEL_SLUG_LENGTH = MAX_JOB_NAME_LENGTH - len(JOB_NAME_PREFIX) - 1 - JOB_NAME_SUFFIX_LENGTH


@dataclass(frozen=True)
class ClusterOptions:
    """What running on a cluster adds to training_hub's parameters.

    ``pod``, ``env``, ``volumes``, ``volume_mounts`` and ``resources`` are in the API's shape
    (camelCase keys, as in ``spec.pod`` of an SFTJob manifest).
    """

    namespace: str | None = None  # default: the kubeconfig context's namespace, else "default"
    name: str | None = None  # default: sft-<model>-<random>
    image: str | None = None  # default: the operator's trainer image
    resources: dict[str, Any] | None = None  # {"limits": {...}, "requests": {...}}
    device: str | None = None  # "cuda" (default) or "cpu" (smoke tests)
    # size of a claim the operator creates, e.g. "500Gi" (training_hub's checkpoint_storage is a URI)
    checkpoint_claim_size: str | None = None
    storage_class: str | None = None  # its storage class
    delete_checkpoints_with_job: bool | None = None
    # continue from checkpoints another job with other training fields wrote in ckpt_output_dir
    adopt_existing_checkpoints: bool | None = None
    # Remote sources and the export (spec.remote, spec.export; docs/data.md). Credentials only by
    # Secret name: the transfer sidecar alone sees them.
    hf_token_secret: str | None = None  # Secret with key HF_TOKEN, for gated or private hf:// repos
    hf_endpoint: str | None = None  # a Hugging Face mirror
    s3_credentials_secret: str | None = None  # Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
    s3_endpoint: str | None = None  # an S3-compatible endpoint (MinIO, Ceph, ...)
    s3_region: str | None = None
    source_cache_claim: str | None = None  # a claim caching fetched sources across jobs
    export_uri: str | None = None  # s3://bucket/prefix: complete checkpoints uploaded there
    export_full_states: bool | None = None  # full states too (checkpoint_storage implies it)
    env: dict[str, str] | list[dict[str, Any]] | None = None
    volumes: list[dict[str, Any]] | None = None
    volume_mounts: list[dict[str, Any]] | None = None
    pod: dict[str, Any] | None = None  # any other spec.pod setting (nodeSelector, tolerations, ...)
    max_restarts: int | None = None
    full_state_retention: int | None = None
    suspend: bool | None = None
    labels: dict[str, str] | None = None  # labels of the SFTJob object
    wait: bool = True
    timeout: float | None = None  # seconds to wait; the job keeps running after it
    show_progress: bool = True
    api_client: Any = None  # a kubernetes.client.ApiClient; default: from kubeconfig/context
    kubeconfig: str | None = None
    context: str | None = None

    def replace(self, **changes: Any) -> ClusterOptions:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return ClusterOptions(**values)


CLUSTER_PARAMS: frozenset[str] = frozenset(f.name for f in fields(ClusterOptions))


@dataclass(frozen=True)
class ParameterProblem:
    param: str
    spec_path: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.param} ({self.spec_path})" if self.spec_path and self.spec_path != self.param else self.param
        return f"{where}: {self.message}"


class SFTParameterError(InvalidSpecError):
    """sft() parameters the operator would refuse; raised before the cluster is contacted.

    ``problems`` holds (spec path, message) pairs as the operator reports them; ``parameters``
    the same problems keyed by sft() parameter.
    """

    def __init__(self, parameters: list[ParameterProblem]):
        self.parameters = parameters
        super().__init__([(p.spec_path or p.param, p.message) for p in parameters])
        self.args = ("invalid sft() parameters: " + "; ".join(str(p) for p in parameters),)

    @property
    def params(self) -> list[str]:
        return [p.param for p in self.parameters]


def param_for_spec_path(spec_path: str) -> str:
    """The sft() parameter behind a spec path, e.g. spec.maxTokensPerGpu -> max_tokens_per_gpu."""
    if spec_path.startswith("spec.extraArgs."):
        return spec_path[len("spec.extraArgs.") :].split(".")[0].split("[")[0]
    candidate = spec_path
    # The path, then each parent: spec.pod.env[0].name, spec.pod.env[0], spec.pod.env, ...; a map
    # key in brackets may hold dots (spec.pod.resources.limits[nvidia.com/gpu]).
    while True:
        if candidate in PARAM_OF_SPEC_PATH:
            return PARAM_OF_SPEC_PATH[candidate]
        parent = re.sub(r"(\.[^.\[]*|\[[^\]]*\])$", "", candidate)
        if parent == candidate:
            break
        candidate = parent
    head = spec_path.removeprefix("spec.").split(".")[0].split("[")[0]
    return PARAM_OF_ALIAS.get(head, head)


def generate_job_name(model_path: str, suffix: str | None = None) -> str:
    """sft-<model>-<5 random characters>, a valid job name (DNS-1035, at most MAX_JOB_NAME_LENGTH)."""
    if suffix is None:
        alphabet = string.ascii_lowercase + string.digits
        suffix = "".join(secrets.choice(alphabet) for _ in range(JOB_NAME_SUFFIX_LENGTH))
    last = model_path.rstrip("/").rsplit("/", 1)[-1]
    slug = re.sub(r"[^a-z0-9]+", "-", last.lower()).strip("-")[:MAX_MODEL_SLUG_LENGTH].strip("-")
    return f"{JOB_NAME_PREFIX}{slug}-{suffix}" if slug else f"{JOB_NAME_PREFIX}{suffix}"


def _nproc(value: Any) -> int | str:
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, str):
        raise ValueError(
            f"{value!r}: on the cluster give the number of processes (GPUs) per pod; the pod's GPU "
            "request is made from it"
        )
    nproc: int | str = value  # not a string: as given (the job's schema checks it)
    return nproc


def _env_list(env: dict[str, str] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(env, dict):
        return [{"name": name, "value": str(value)} for name, value in env.items()]
    return [dict(var) for var in env]


def checkpoint_storage_problem(value: Any) -> str | None:
    """What is wrong with training_hub's ``checkpoint_storage`` on this backend, or None.

    training_hub takes None, "pvc" (checkpoints on the file system only) or a remote URI that it
    mirrors checkpoints to and restores from. Here the transfer sidecar does both for ``s3://``
    (spec.export); training_hub's other fsspec schemes have no exporter here, so they are refused
    rather than silently ignored. A quantity is this API's old use of the name (the claim's size),
    now checkpoint_claim_size.
    """
    if value in (None, "", "pvc"):
        return None
    if isinstance(value, str) and "://" in value:
        if value.startswith(sources.S3_SCHEME):
            return None  # the bucket and prefix are checked as spec.export.uri
        return (
            f"{value!r}: the {KUBERNETES_BACKEND_NAME} backend mirrors checkpoints to s3:// (any S3-compatible "
            "store, s3_endpoint) only; leave checkpoint_storage unset or 'pvc' to keep them on the job's claim"
        )
    if (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and re.match(QUANTITY_PATTERN, value)
    ):
        return (
            f"{value!r} is a claim size, but checkpoint_storage is training_hub's remote checkpoint URI: "
            f"give the size as checkpoint_claim_size={value!r} (sft-operator submit --checkpoint-claim-size)"
        )
    return f"{value!r}: must be None, 'pvc' or a remote URI such as 's3://bucket/prefix'"


def export_target(
    storage_uri: str | None, cluster: ClusterOptions, problems: list[ParameterProblem]
) -> tuple[dict[str, Any], str]:
    """spec.export from ``checkpoint_storage`` (a remote URI: training_hub mirrors full checkpoints
    there and restores from it when the local directory is empty, hence fullStates and restore)
    and ``export_uri``/``export_full_states``; and the parameter that set the URI. Conflicts are
    appended to ``problems``."""
    export: dict[str, Any] = {}
    param = "export_uri"
    if storage_uri is not None:
        export = {"uri": storage_uri, "fullStates": True, "restore": True}
        param = "checkpoint_storage"
    if cluster.export_uri is not None:
        if export and export["uri"] != cluster.export_uri:
            problems.append(
                ParameterProblem(
                    "export_uri",
                    "spec.export.uri",
                    f"{cluster.export_uri!r}: checkpoint_storage={storage_uri!r} is the export target already; set one of them",
                )
            )
        elif not export:
            export = {"uri": cluster.export_uri}
    if cluster.export_full_states is not None:
        if not export:
            problems.append(
                ParameterProblem(
                    "export_full_states", "spec.export.fullStates", "only applies with export_uri or checkpoint_storage"
                )
            )
        elif storage_uri is not None and cluster.export_full_states is False:
            problems.append(
                ParameterProblem(
                    "export_full_states",
                    "spec.export.fullStates",
                    "False: checkpoint_storage restores from the exported full states, so they are uploaded; "
                    "give export_uri instead to export the hf_format checkpoints only",
                )
            )
        else:
            export["fullStates"] = cluster.export_full_states
    return export, param


def remote_access(cluster: ClusterOptions) -> dict[str, Any]:
    """spec.remote from the Secret, endpoint and cache-claim keyword arguments (only those given)."""
    remote: dict[str, Any] = {}
    hugging_face = {
        key: value
        for key, value in (("tokenSecret", cluster.hf_token_secret), ("endpoint", cluster.hf_endpoint))
        if value is not None
    }
    s3 = {
        key: value
        for key, value in (
            ("credentialsSecret", cluster.s3_credentials_secret),
            ("endpoint", cluster.s3_endpoint),
            ("region", cluster.s3_region),
        )
        if value is not None
    }
    if hugging_face:
        remote["huggingFace"] = hugging_face
    if s3:
        remote["s3"] = s3
    if cluster.source_cache_claim is not None:
        remote["cacheClaim"] = cluster.source_cache_claim
    return remote


def jit_checkpoint_warning(params: dict[str, Any]) -> str | None:
    """The warning for ``enable_jit_checkpoint=False``: this backend's SIGTERM save cannot be turned off."""
    if params.get("enable_jit_checkpoint") is not False:
        return None
    return (
        "enable_jit_checkpoint=False: on the cluster a pod that is stopped (preemption, suspend, node "
        "drain) always saves a checkpoint first, so that nothing is lost; this run does too"
    )


def build_sftjob(params: dict[str, Any], cluster: ClusterOptions, *, name: str, namespace: str) -> dict[str, Any]:
    """The SFTJob manifest for ``params`` (training_hub names, kwargs included, None = unset).

    Only what the caller set appears in the spec: defaults stay the operator's. Raises
    SFTParameterError naming every bad parameter.
    """
    problems: list[ParameterProblem] = []
    given = {key: value for key, value in params.items() if value is not None}

    backend = given.pop("backend", BACKEND_NAME)
    if backend not in (BACKEND_NAME, KUBERNETES_BACKEND_NAME):
        problems.append(
            ParameterProblem(
                "backend",
                None,
                f"{backend!r}: the cluster runs {BACKEND_NAME!r} only "
                f"(give backend={BACKEND_NAME!r} or {KUBERNETES_BACKEND_NAME!r})",
            )
        )
    jit = given.pop("enable_jit_checkpoint", None)
    if not isinstance(jit, bool | None):
        problems.append(ParameterProblem("enable_jit_checkpoint", None, f"{jit!r}: must be True, False or None"))
    storage = given.pop("checkpoint_storage", None)
    storage_problem = checkpoint_storage_problem(storage)
    if storage_problem is not None:
        problems.append(ParameterProblem("checkpoint_storage", None, storage_problem))
        storage = None
    export, export_param = export_target(
        storage if isinstance(storage, str) and "://" in storage else None, cluster, problems
    )
    if given.pop("callbacks", None):
        problems.append(
            ParameterProblem(
                "callbacks", None, "Python callbacks cannot run inside the cluster's pods; follow status instead"
            )
        )
    for param, why in OPERATOR_CHOSEN_TORCHRUN_PARAMS.items():
        if param in given:
            given.pop(param)
            problems.append(ParameterProblem(param, None, f"set by the operator: {why}"))
    if "max_batch_len" in given and "max_tokens_per_gpu" not in given:
        given["max_tokens_per_gpu"] = given.pop("max_batch_len")

    spec: dict[str, Any] = {}
    if "nproc_per_node" in given:
        try:
            given["nproc_per_node"] = _nproc(given["nproc_per_node"])
        except ValueError as exc:
            given.pop("nproc_per_node")
            problems.append(ParameterProblem("nproc_per_node", "spec.nprocPerNode", str(exc)))
    if "rdzv_id" in given and isinstance(given["rdzv_id"], int) and not isinstance(given["rdzv_id"], bool):
        given["rdzv_id"] = str(given["rdzv_id"])
    if "master_port" in given:
        spec[SPEC_ALIAS["rdzv_port"]] = given.pop("master_port")

    # --- gang scheduling and queues (training_hub has no names for them) ----------------------
    scheduling = dict(given.pop("scheduling", None) or {})
    scheduling_params = {param for param in ("queue_name", "gang") if param in given}
    for param, key in (("queue_name", "queueName"), ("gang", "gang")):
        if param not in given:
            continue
        value = given.pop(param)
        if key in scheduling:
            problems.append(ParameterProblem(param, f"spec.scheduling.{key}", "also set in scheduling; set it once"))
            continue
        scheduling[key] = {"provider": value} if param == "gang" and isinstance(value, str) else value
    if scheduling:
        spec[SPEC_ALIAS["scheduling"]] = scheduling

    # --- paths --------------------------------------------------------------------------------
    checkpoints: dict[str, Any] = {}
    try:
        placement = place_checkpoints(str(given.pop("ckpt_output_dir", "")), cluster.checkpoint_claim_size is not None)
    except PathProblem as problem:
        problems.append(ParameterProblem(problem.param, "spec.checkpoints", problem.message))
        placement = CheckpointPlacement(existing_claim=None, path="")  # still check the other paths
    else:
        checkpoints = placement.as_spec()
    extra_volumes: list[dict[str, Any]] = []
    extra_mounts: list[dict[str, Any]] = []
    pod_paths = {param: str(given[param]) for param in POD_PATH_PARAMS if param in given}
    unplaced_paths: set[str] = set()
    try:
        placed = place_pod_paths(pod_paths, placement)
    except PathProblems as found:
        for path_problem in found.problems:
            problems.append(
                ParameterProblem(path_problem.param, f"spec.{SPEC_ALIAS[path_problem.param]}", path_problem.message)
            )
        # The other paths were not placed either: the operator's validation below would judge them
        # as written (pvc://...), not as the pods would see them. A stand-in path lets it check
        # everything else (nothing is created while a problem is reported).
        for param in pod_paths:
            given[param] = f"/unplaced/{param}"
            unplaced_paths.add(param)
    else:
        given.update(placed.values)
        extra_volumes, extra_mounts = placed.volumes, placed.volume_mounts
    if cluster.checkpoint_claim_size is not None:
        claim: dict[str, Any] = {CLAIM_ALIAS["size"]: cluster.checkpoint_claim_size}
        if cluster.storage_class is not None:
            claim[CLAIM_ALIAS["storage_class_name"]] = cluster.storage_class
        checkpoints[CHECKPOINTS_ALIAS["claim"]] = claim
    elif cluster.storage_class is not None:
        problems.append(ParameterProblem("storage_class", None, "only applies with checkpoint_claim_size"))
    if cluster.delete_checkpoints_with_job is not None:
        checkpoints[CHECKPOINTS_ALIAS["delete_with_job"]] = cluster.delete_checkpoints_with_job
    if cluster.adopt_existing_checkpoints is not None:
        checkpoints[CHECKPOINTS_ALIAS["adopt_existing"]] = cluster.adopt_existing_checkpoints

    # --- training fields and extraArgs --------------------------------------------------------
    extra_args: dict[str, Any] = {}
    for param, value in given.items():
        if param in SPEC_PARAMS:
            spec[SPEC_ALIAS[param]] = value
        else:
            extra_args[param] = value
    if extra_args:
        spec[SPEC_ALIAS["extra_args"]] = extra_args
    spec[SPEC_ALIAS["checkpoints"]] = checkpoints

    # --- cluster settings ---------------------------------------------------------------------
    pod: dict[str, Any] = dict(cluster.pod or {})
    for key, value in (
        ("image", cluster.image),
        ("resources", cluster.resources),
        ("env", _env_list(cluster.env) if cluster.env is not None else None),
    ):
        if value is not None:
            pod[POD_ALIAS[key]] = value
    volumes_key, mounts_key = POD_ALIAS["volumes"], POD_ALIAS["volume_mounts"]
    volumes = [*(cluster.volumes or pod.get(volumes_key) or []), *extra_volumes]
    mounts = [*(cluster.volume_mounts or pod.get(mounts_key) or []), *extra_mounts]
    names = [v.get("name") for v in volumes if isinstance(v, dict)]
    for dup in sorted({n for n in names if names.count(n) > 1}, key=str):
        problems.append(
            ParameterProblem(
                "volumes", "spec.pod.volumes", f"volume {dup!r} is defined twice (pvc:// paths add pvc-<claim>)"
            )
        )
    if volumes:
        pod[volumes_key] = volumes
    if mounts:
        pod[mounts_key] = mounts
    if pod:
        spec[SPEC_ALIAS["pod"]] = pod
    for param in ("device", "max_restarts", "full_state_retention", "suspend"):
        value = getattr(cluster, param)
        if value is not None:
            spec[SPEC_ALIAS[param]] = value
    remote = remote_access(cluster)
    if remote:
        spec[SPEC_ALIAS["remote"]] = remote
    if export:
        spec[SPEC_ALIAS["export"]] = export

    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if cluster.labels:
        metadata["labels"] = dict(cluster.labels)

    # --- the operator's own validation --------------------------------------------------------
    job = None
    try:
        job = parse_job({"metadata": metadata, "spec": spec})
    except InvalidSpecError as exc:
        # A parameter already refused here (e.g. a path no pod can see) is not reported twice.
        refused = {p.param for p in problems}
        for path, message in exc.problems:
            param = param_for_spec_path(path)
            if param in ("queue_name", "gang") and param not in scheduling_params:
                param = "scheduling"  # set through scheduling={...}
            if param == "export_uri":
                param = export_param  # the export target came from checkpoint_storage or export_uri
            if param not in refused and param not in unplaced_paths:
                problems.append(ParameterProblem(param, path, message))
    if problems:
        raise SFTParameterError(problems)
    assert job is not None
    return {
        "apiVersion": contract.API_VERSION,
        "kind": contract.KIND,
        "metadata": metadata,
        "spec": job.spec.model_dump(mode="json", by_alias=True, exclude_unset=True),
    }


def split_params(algorithm_params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """algorithm_params -> (training params, cluster settings found among them)."""
    training = {k: v for k, v in algorithm_params.items() if k not in CLUSTER_PARAMS}
    cluster = {k: v for k, v in algorithm_params.items() if k in CLUSTER_PARAMS and v is not None}
    return training, cluster


__all__ = [
    "BACKEND_NAME",
    "CLUSTER_PARAMS",
    "KUBERNETES_BACKEND_NAME",
    "TRAINING_HUB_SFT_PARAMS",
    "ClusterOptions",
    "ParameterProblem",
    "SFTParameterError",
    "build_sftjob",
    "checkpoint_storage_problem",
    "export_target",
    "generate_job_name",
    "jit_checkpoint_warning",
    "param_for_spec_path",
    "remote_access",
    "split_params",
]
