"""training_hub's API, running on the cluster: ``sft()``, ``SFTAlgorithm`` and a backend.

Moving a training_hub script to the cluster is one changed import::

    from sft_client.api import sft          # was: from training_hub import sft

plus where the paths live (paths.py) and, optionally, cluster settings (namespace, image, ...).
The signatures are training-hub 0.11.2's (same names, order and meanings; checked against its
wheel by tests/unit/test_training_hub_conformance.py), then our cluster settings, keyword-only.
This module imports training_hub only in ``register_with_training_hub``, and only if it is
installed (it pulls torch).
"""

from __future__ import annotations

import abc
import importlib.util
import os
import warnings
from dataclasses import dataclass
from typing import Any, TextIO

from sft_client.api import transfer, uploads
from sft_client.api.display import ByteProgress, ProgressDisplay
from sft_client.api.jobs import (
    SFTJobNotFoundError,
    SFTJobRefusedError,
    connect,
    create_job,
    get_job,
    wait_for_job,
)
from sft_client.api.mapping import (
    BACKEND_NAME,
    KUBERNETES_BACKEND_NAME,
    TRAINING_HUB_SFT_PARAMS,
    ClusterOptions,
    ParameterProblem,
    SFTParameterError,
    build_sftjob,
    checkpoint_storage_problem,
    generate_job_name,
    jit_checkpoint_warning,
    split_params,
)
from sft_client.api.paths import PathProblem
from sft_client.api.results import SFTJobResult, result_of
from sft_models.models import epoch_full_state_warning, parse_job


@dataclass(frozen=True)
class Prepared:
    """A validated SFTJob manifest, the effective cluster options, and the upload its data_path
    needs first (None: the data is in the pods' reach already)."""

    manifest: dict[str, Any]
    options: ClusterOptions
    upload: uploads.UploadPlan | None = None


class Backend(abc.ABC):
    """training_hub's backend interface: ``execute_training(algorithm_params)`` does the work."""

    @abc.abstractmethod
    def execute_training(self, algorithm_params: dict[str, Any]) -> Any: ...


class KubernetesSFTBackend(Backend):
    """Runs SFT as an SFTJob: builds it through the models, validates it locally, creates it and
    (``wait=True``) follows it to the end.

    Takes the cluster settings of ClusterOptions as keyword arguments; any of them found in
    ``algorithm_params`` (e.g. ``SFTAlgorithm.train(..., namespace="ml")``) overrides them.
    """

    def __init__(self, *, stream: TextIO | None = None, **cluster_options: Any):
        if "checkpoint_storage" in cluster_options:  # this class's old claim-size setting
            value = cluster_options.pop("checkpoint_storage")
            message = checkpoint_storage_problem(value) or (
                f"{value!r}: training_hub's remote checkpoint URI is a training parameter: give it to train() or sft()"
            )
            raise SFTParameterError([ParameterProblem("checkpoint_storage", None, message)])
        self.options = ClusterOptions(**cluster_options)
        self.stream = stream

    def build(self, algorithm_params: dict[str, Any]) -> tuple[dict[str, Any], ClusterOptions]:
        """The validated SFTJob manifest and the effective options; contacts nothing.

        The namespace is the given one, else "default" (``execute_training`` then uses the
        kubeconfig context's namespace when none was given). A data_path on this machine is
        measured (size, sha256) and appears as the claim path it will be uploaded to.
        """
        prepared = self.prepare(algorithm_params)
        return prepared.manifest, prepared.options

    def prepare(self, algorithm_params: dict[str, Any]) -> Prepared:
        """``build``, and the upload plan of a data_path on this machine (uploads.py)."""
        training, overrides = split_params(algorithm_params)
        options = self.options.replace(**overrides)
        name = options.name or generate_job_name(str(training.get("model_path") or ""))
        namespace = options.namespace or "default"
        plan = None
        local = self._local_data_file(training.get("data_path"))
        if local is not None:
            # Every other parameter is checked before the file is read (it may be large): with
            # a stand-in of the same name, then with its real digest.
            stand_in = uploads.LocalFile(local, 0, "0" * 64)
            build_sftjob(
                {**training, "data_path": self._plan(stand_in, name, training, options).data_url},
                options,
                name=name,
                namespace=namespace,
            )

            def progress(description: str, total: int | None) -> ByteProgress:
                return ByteProgress(description, total, stream=self.stream, enabled=options.show_progress)

            plan = self._plan(transfer.measure_local_file(local, progress), name, training, options)
            training = {**training, "data_path": plan.data_url}
        manifest = build_sftjob(training, options, name=name, namespace=namespace)
        warning = epoch_full_state_warning(manifest["spec"])
        if warning is not None:  # the operator posts it as an Event too; said here before anything runs
            warnings.warn(f"checkpoint_at_epoch=False: {warning}", UserWarning, stacklevel=3)
        jit_warning = jit_checkpoint_warning(training)
        if jit_warning is not None:
            warnings.warn(jit_warning, UserWarning, stacklevel=3)
        return Prepared(manifest, options, plan)

    @staticmethod
    def _local_data_file(data_path: Any) -> str | None:
        """The file on this machine that data_path names (None: not one), checked to exist."""
        if not isinstance(data_path, str):
            return None
        try:
            local = uploads.local_data_file(data_path)
        except PathProblem as problem:
            raise SFTParameterError([ParameterProblem("data_path", "spec.dataPath", problem.message)]) from None
        if local is not None and not os.path.isfile(local):
            why = (
                "is a directory; data_path names one JSONL file"
                if os.path.isdir(local)
                else (
                    "no such file on this machine (a relative path or file:// is uploaded from here; a path in the "
                    "pods is absolute, a remote one hf://, s3:// or https://)"
                )
            )
            raise SFTParameterError([ParameterProblem("data_path", "spec.dataPath", f"{data_path!r}: {why}")])
        return local

    @staticmethod
    def _plan(
        file: uploads.LocalFile, name: str, training: dict[str, Any], options: ClusterOptions
    ) -> uploads.UploadPlan:
        nnodes = training.get("nnodes")
        if isinstance(nnodes, str) and nnodes.strip().isdigit():
            nnodes = int(nnodes)
        return uploads.plan_upload(
            file,
            job_name=name,
            ckpt_output_dir=str(training.get("ckpt_output_dir") or ""),
            nnodes=nnodes if isinstance(nnodes, int) else None,
            storage_class=options.storage_class,
        )

    def execute_training(self, algorithm_params: dict[str, Any]) -> SFTJobResult:
        prepared = self.prepare(algorithm_params)  # raises SFTParameterError first
        options, manifest = prepared.options, prepared.manifest
        api_client = options.api_client
        namespace = options.namespace
        if api_client is None:
            api_client, context_namespace = connect(options.kubeconfig, options.context)
            namespace = namespace or context_namespace
        manifest["metadata"]["namespace"] = namespace or "default"
        display = ProgressDisplay(stream=self.stream, enabled=options.show_progress)
        created = submit(api_client, prepared, stream=self.stream, show_progress=options.show_progress)
        name, namespace = created["metadata"]["name"], created["metadata"]["namespace"]
        display.note(f"Created SFTJob {namespace}/{name}")
        if not options.wait:
            return result_of(created, manifest, api_client)
        return wait_for_job(api_client, name, namespace, timeout=options.timeout, display=display, manifest=manifest)


def submit(
    api_client: Any,
    prepared: Prepared,
    *,
    stream: TextIO | None = None,
    show_progress: bool = True,
    start_timeout_s: float | None = None,
) -> dict[str, Any]:
    """Upload the data when the plan says so, then create the job; the upload claim made for it
    becomes the job's (deleted with it). A job that cannot be created leaves no claim behind;
    one that exists already is found before anything is uploaded. Returns the created object."""
    manifest, plan = prepared.manifest, prepared.upload
    if plan is None:
        return create_job(api_client, manifest)
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    try:
        get_job(api_client, name, namespace)
    except SFTJobNotFoundError:
        pass
    else:
        raise SFTJobRefusedError(f"SFTJob {namespace}/{name} was not created: it exists already; nothing was uploaded")
    pod = parse_job(manifest).spec.pod
    display = ProgressDisplay(stream=stream, enabled=show_progress)

    def progress(description: str, total: int | None) -> ByteProgress:
        return ByteProgress(description, total, stream=stream, enabled=show_progress)

    outcome = transfer.upload(
        api_client,
        namespace,
        plan,
        job_name=name,
        image=pod.image,
        image_pull_policy=pod.image_pull_policy,
        fs_group=pod.fs_group,
        progress=progress,
        start_timeout_s=start_timeout_s,
    )
    where = f"claim {namespace}/{plan.target.claim}, {plan.target.path}"
    display.note(
        f"Uploaded {plan.file.path} to {where}"
        if outcome.sent
        else f"{plan.file.path} is on {where} already (same sha256): not sent again"
    )
    try:
        created = create_job(api_client, manifest)
    except BaseException:
        if outcome.claim_created:
            import kubernetes.client

            transfer.delete_claim(kubernetes.client.CoreV1Api(api_client), plan.target.claim, namespace)
        raise
    if outcome.claim_created:
        try:
            transfer.make_owner(api_client, namespace, plan.target.claim, created)
        except Exception as exc:  # the job runs either way; the claim then outlives it
            warnings.warn(
                f"claim {namespace}/{plan.target.claim} could not be given to SFTJob {name} "
                f"({exc}); delete it yourself once the job is gone",
                RuntimeWarning,
                stacklevel=2,
            )
    return created


# `from sft_client.api import InstructLabTrainingSFTBackend` keeps class-based code unchanged.
InstructLabTrainingSFTBackend = KubernetesSFTBackend


class SFTAlgorithm:
    """Supervised fine-tuning; ``train`` hands its parameters to the backend."""

    def __init__(self, backend: Backend | None = None, **kwargs: Any):
        self.backend = backend if backend is not None else KubernetesSFTBackend()
        self.config = kwargs

    def train(
        self,
        model_path: str,
        data_path: str,
        ckpt_output_dir: str,
        num_epochs: int | None = None,
        effective_batch_size: int | None = None,
        learning_rate: float | None = None,
        max_seq_len: int | None = None,
        max_tokens_per_gpu: int | None = None,
        data_output_dir: str | None = None,
        save_samples: int | None = None,
        warmup_steps: int | None = None,
        accelerate_full_state_at_epoch: bool | None = None,
        checkpoint_at_epoch: bool | None = None,
        is_pretraining: bool | None = None,
        block_size: int | None = None,
        document_column_name: str | None = None,
        beta1: float | None = None,
        beta2: float | None = None,
        eps: float | None = None,
        weight_decay: float | None = None,
        nproc_per_node: str | int | None = None,
        nnodes: int | None = None,
        node_rank: int | None = None,
        rdzv_id: str | int | None = None,
        rdzv_endpoint: str | None = None,
        master_addr: str | None = None,
        master_port: int | None = None,
        wandb_project: str | None = None,
        wandb_entity: str | None = None,
        wandb_run_name: str | None = None,
        tensorboard_log_dir: str | None = None,
        mlflow_tracking_uri: str | None = None,
        mlflow_experiment_name: str | None = None,
        mlflow_run_name: str | None = None,
        *,
        callbacks: Any = None,
        enable_jit_checkpoint: bool | None = None,
        checkpoint_storage: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run SFT with the backend. Parameters as training_hub's ``SFTAlgorithm.train``; None
        means "the default" (the operator's, which are instructlab-training's). ``kwargs``: other
        TrainingArgs fields (checked, never dropped) and, for KubernetesSFTBackend, cluster
        settings (namespace, name, image, ...). ``enable_jit_checkpoint`` and ``checkpoint_storage``:
        see ``sft``."""
        given = dict(locals())
        params = {key: given[key] for key in TRAINING_HUB_SFT_PARAMS if key in given and given[key] is not None}
        params.update(kwargs)
        return self.backend.execute_training(params)

    def get_required_params(self) -> dict[str, type]:
        return {
            "model_path": str,
            "data_path": str,
            "ckpt_output_dir": str,
            "num_epochs": int,
            "effective_batch_size": int,
            "learning_rate": float,
            "max_seq_len": int,
        }


def sft(
    model_path: str,
    data_path: str,
    ckpt_output_dir: str,
    backend: str = BACKEND_NAME,
    num_epochs: int | None = None,
    effective_batch_size: int | None = None,
    learning_rate: float | None = None,
    max_seq_len: int | None = None,
    max_tokens_per_gpu: int | None = None,
    data_output_dir: str | None = None,
    save_samples: int | None = None,
    warmup_steps: int | None = None,
    accelerate_full_state_at_epoch: bool | None = None,
    checkpoint_at_epoch: bool | None = None,
    is_pretraining: bool | None = None,
    block_size: int | None = None,
    document_column_name: str | None = None,
    beta1: float | None = None,
    beta2: float | None = None,
    eps: float | None = None,
    weight_decay: float | None = None,
    nproc_per_node: str | int | None = None,
    nnodes: int | None = None,
    node_rank: int | None = None,
    rdzv_id: str | int | None = None,
    rdzv_endpoint: str | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
    wandb_project: str | None = None,
    wandb_entity: str | None = None,
    wandb_run_name: str | None = None,
    tensorboard_log_dir: str | None = None,
    mlflow_tracking_uri: str | None = None,
    mlflow_experiment_name: str | None = None,
    mlflow_run_name: str | None = None,
    *,
    callbacks: Any = None,
    enable_jit_checkpoint: bool | None = None,
    checkpoint_storage: str | None = None,
    # --- the cluster (see ClusterOptions) ---
    namespace: str | None = None,
    name: str | None = None,
    image: str | None = None,
    resources: dict[str, Any] | None = None,
    device: str | None = None,
    checkpoint_claim_size: str | None = None,
    storage_class: str | None = None,
    delete_checkpoints_with_job: bool | None = None,
    adopt_existing_checkpoints: bool | None = None,
    hf_token_secret: str | None = None,
    hf_endpoint: str | None = None,
    s3_credentials_secret: str | None = None,
    s3_endpoint: str | None = None,
    s3_region: str | None = None,
    source_cache_claim: str | None = None,
    export_uri: str | None = None,
    export_full_states: bool | None = None,
    env: dict[str, str] | list[dict[str, Any]] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    volume_mounts: list[dict[str, Any]] | None = None,
    pod: dict[str, Any] | None = None,
    max_restarts: int | None = None,
    full_state_retention: int | None = None,
    suspend: bool | None = None,
    labels: dict[str, str] | None = None,
    wait: bool = True,
    timeout: float | None = None,
    show_progress: bool = True,
    api_client: Any = None,
    kubeconfig: str | None = None,
    context: str | None = None,
    **kwargs: Any,
) -> SFTJobResult:
    """training_hub's ``sft()``, run as an SFTJob on the cluster.

    Training parameters: as training_hub's (docs/python-api.md has the path mapping:
    ``pvc://claim/path``, ``hf://``/``s3://``/``https://`` sources fetched once by the job, a
    Hugging Face id, an absolute path on a mounted volume, and for ``data_path`` a file on this
    machine, uploaded before the job is created). Other instructlab-training TrainingArgs fields
    go in ``kwargs`` and are checked like ``spec.extraArgs``. Cluster settings are keyword-only
    (ClusterOptions).

    ``enable_jit_checkpoint``: accepted, and always on here: a pod that is stopped (preemption,
    suspend, node drain) saves a checkpoint on SIGTERM before it exits; False warns and changes
    nothing. ``checkpoint_storage``: training_hub's remote checkpoint URI: ``s3://bucket/prefix``
    becomes ``spec.export`` with full states and restore (every complete checkpoint is uploaded
    there; an empty checkpoint directory restores the newest exported full state first); None or
    "pvc" keeps checkpoints on the job's claim only. Other schemes are refused with
    SFTParameterError, and so is a claim size such as "500Gi" (this API's old use of the name:
    give it as ``checkpoint_claim_size``).

    Raises SFTParameterError (naming each bad parameter) before contacting the cluster;
    with ``wait`` (default) follows the job and returns its SFTJobResult, or raises
    SFTJobFailedError with the job's reason and message. Ctrl-C stops waiting, not the job.
    """
    given = dict(locals())
    cluster = {key: given[key] for key in ClusterOptions.__dataclass_fields__}
    training = {key: given[key] for key in TRAINING_HUB_SFT_PARAMS if key != "backend"}
    result: SFTJobResult = SFTAlgorithm(backend=KubernetesSFTBackend(**cluster)).train(
        **training, backend=backend, **kwargs
    )
    return result


def register_with_training_hub() -> bool:
    """Register KubernetesSFTBackend as training_hub's sft backend "kubernetes" (and
    KubernetesOSFTBackend as its osft one), when training_hub is installed (the ``training-hub``
    extra), so that ``from training_hub import sft; sft(..., backend="kubernetes")`` (or ``osft``)
    runs on the cluster through this same backend.

    Returns whether it registered. training_hub's own ``SFTAlgorithm.train`` then calls
    ``execute_training``; cluster settings travel in its ``**kwargs``. Nothing is imported when
    training_hub is not installed; one that is installed but cannot be imported (its import
    loads torch and instructlab-training) is reported as a warning and leaves this package usable.
    """
    if importlib.util.find_spec("training_hub") is None:
        return False
    try:
        from training_hub import AlgorithmRegistry
    except Exception as exc:  # any failure of its import chain: ImportError, OSError from CUDA libraries, ...
        warnings.warn(
            f"training_hub is installed but cannot be imported ({type(exc).__name__}: {exc}); "
            f"its backend {KUBERNETES_BACKEND_NAME!r} is not registered",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    AlgorithmRegistry.register_backend("sft", KUBERNETES_BACKEND_NAME, KubernetesSFTBackend)
    from sft_client.api.osft import KubernetesOSFTBackend  # imports this module: not at the top

    AlgorithmRegistry.register_backend("osft", KUBERNETES_BACKEND_NAME, KubernetesOSFTBackend)
    return True
