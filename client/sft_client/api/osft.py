"""training_hub's ``osft()`` and ``OSFTAlgorithm`` on the cluster: an SFTJob with ``algorithm: osft``.

    from sft_client.api import osft          # was: from training_hub import osft

The signatures are training-hub 0.11.2's (names, order, defaults; checked against its wheel by
tests/unit/test_training_hub_conformance.py), then the cluster settings of ``sft()``,
keyword-only. Parameters map onto the spec as for ``sft()`` (mapping.build_sftjob: paths,
topology, the operator's validation naming each parameter); OSFT's own ones are typed spec fields
(``unfreezeRankRatio``, ``targetPatterns``, ...).
"""

from __future__ import annotations

from typing import Any

from sft_client.api.mapping import (
    KUBERNETES_BACKEND_NAME,
    ClusterOptions,
    ParameterProblem,
    SFTParameterError,
    split_params,
)
from sft_client.api.results import SFTJobResult
from sft_client.api.training_hub import Backend, KubernetesSFTBackend, Prepared

OSFT_BACKEND_NAME = "mini-trainer"
MINI_TRAINER_DEFAULT_EPOCHS = 1  # TrainingArgs.max_epochs' default in mini-trainer 0.9.0

# training_hub osft()'s parameters, in its order (backend and callbacks included).
TRAINING_HUB_OSFT_PARAMS: tuple[str, ...] = (
    "model_path",
    "data_path",
    "unfreeze_rank_ratio",
    "effective_batch_size",
    "max_tokens_per_gpu",
    "max_seq_len",
    "learning_rate",
    "ckpt_output_dir",
    "data_output_dir",
    "backend",
    "target_patterns",
    "seed",
    "use_liger",
    "use_processed_dataset",
    "unmask_messages",
    "is_pretraining",
    "block_size",
    "document_column_name",
    "lr_scheduler",
    "warmup_steps",
    "lr_scheduler_kwargs",
    "beta1",
    "beta2",
    "eps",
    "weight_decay",
    "checkpoint_at_epoch",
    "save_final_checkpoint",
    "num_epochs",
    "nproc_per_node",
    "nnodes",
    "node_rank",
    "rdzv_id",
    "rdzv_endpoint",
    "master_port",
    "master_addr",
    "wandb_project",
    "wandb_entity",
    "wandb_run_name",
    "tensorboard_log_dir",
    "mlflow_tracking_uri",
    "mlflow_experiment_name",
    "mlflow_run_name",
    "trust_remote_code",
    "callbacks",
    "enable_jit_checkpoint",
    "checkpoint_storage",
)

# osft() parameters the cluster does not run yet: refused, never dropped.
NOT_RUN_HERE: dict[str, str] = {
    "use_processed_dataset": "the operator processes the data once itself (messages JSONL)",
    "unmask_messages": "not supported on the cluster yet (give samples their own 'unmask' field)",
    "is_pretraining": "OSFT pretraining is not supported on the cluster yet",
    "block_size": "OSFT pretraining is not supported on the cluster yet",
    "document_column_name": "OSFT pretraining is not supported on the cluster yet",
    "tensorboard_log_dir": "mini-trainer has no TensorBoard logger (use wandb_* or mlflow_*)",
    "trust_remote_code": "not supported for OSFT on the cluster yet",
}


class KubernetesOSFTBackend(KubernetesSFTBackend):
    """Runs OSFT as an SFTJob with ``algorithm: osft``; otherwise KubernetesSFTBackend."""

    def prepare(self, algorithm_params: dict[str, Any]) -> Prepared:
        """KubernetesSFTBackend.prepare (and so build and execute_training) with algorithm osft."""
        training, overrides = split_params(algorithm_params)
        given = {key: value for key, value in training.items() if value is not None}
        problems: list[ParameterProblem] = []
        backend = given.pop("backend", OSFT_BACKEND_NAME)
        if backend not in (OSFT_BACKEND_NAME, KUBERNETES_BACKEND_NAME):
            problems.append(
                ParameterProblem(
                    "backend",
                    None,
                    f"{backend!r}: the cluster runs {OSFT_BACKEND_NAME!r} for osft "
                    f"(give backend={OSFT_BACKEND_NAME!r} or {KUBERNETES_BACKEND_NAME!r})",
                )
            )
        for param, why in NOT_RUN_HERE.items():
            if param in given and given.pop(param) is not False:
                problems.append(ParameterProblem(param, None, why))
        # training_hub's enable_jit_checkpoint=True arrives as mini-trainer's flag: always on here.
        if given.pop("on_demand_checkpointing", True) is not True:
            problems.append(
                ParameterProblem(
                    "on_demand_checkpointing", None, "always on: a stopped pod saves a full state on SIGTERM"
                )
            )
        if "algorithm" in given and given["algorithm"] != "osft":
            problems.append(ParameterProblem("algorithm", "spec.algorithm", "osft() runs algorithm 'osft'"))
        if problems:
            raise SFTParameterError(problems)
        # Optional in osft() (mini-trainer then trains one epoch), required by the spec.
        given.setdefault("num_epochs", MINI_TRAINER_DEFAULT_EPOCHS)
        return super().prepare({**given, "algorithm": "osft", **overrides})


class OSFTAlgorithm:
    """Orthogonal Subspace Fine-Tuning; ``train`` hands its parameters to the backend."""

    def __init__(self, backend: Backend | None = None, **kwargs: Any):
        self.backend = backend if backend is not None else KubernetesOSFTBackend()
        self.kwargs = kwargs

    def train(
        self,
        model_path: str,
        data_path: str,
        unfreeze_rank_ratio: float,
        effective_batch_size: int,
        max_tokens_per_gpu: int,
        max_seq_len: int,
        learning_rate: float,
        ckpt_output_dir: str,
        target_patterns: list[str] | None = None,
        seed: int | None = None,
        use_liger: bool | None = None,
        lr_scheduler: str | None = None,
        warmup_steps: int | None = None,
        lr_scheduler_kwargs: dict[str, str] | None = None,
        beta1: float | None = None,
        beta2: float | None = None,
        eps: float | None = None,
        weight_decay: float | None = None,
        checkpoint_at_epoch: bool | None = None,
        save_final_checkpoint: bool | None = None,
        num_epochs: int | None = None,
        use_processed_dataset: bool | None = None,
        unmask_messages: bool | None = None,
        data_output_dir: str | None = None,
        is_pretraining: bool | None = None,
        block_size: int | None = None,
        document_column_name: str | None = None,
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
        trust_remote_code: bool | None = None,
        *,
        callbacks: Any = None,
        enable_jit_checkpoint: bool | None = None,
        checkpoint_storage: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run OSFT with the backend. Parameters as training_hub's ``OSFTAlgorithm.train``; None
        means "the default" (the operator's, else mini-trainer's). ``kwargs``: for
        KubernetesOSFTBackend, cluster settings (namespace, name, image, ...); anything else is
        refused by the operator's validation, naming it."""
        given = dict(locals())
        params = {key: given[key] for key in TRAINING_HUB_OSFT_PARAMS if key in given and given[key] is not None}
        params.update(kwargs)
        return self.backend.execute_training(params)

    def get_required_params(self) -> dict[str, type]:
        return {
            "model_path": str,
            "data_path": str,
            "unfreeze_rank_ratio": float,
            "effective_batch_size": int,
            "max_tokens_per_gpu": int,
            "max_seq_len": int,
            "learning_rate": float,
            "ckpt_output_dir": str,
        }


def osft(
    model_path: str,
    data_path: str,
    unfreeze_rank_ratio: float,
    effective_batch_size: int,
    max_tokens_per_gpu: int,
    max_seq_len: int,
    learning_rate: float,
    ckpt_output_dir: str,
    data_output_dir: str | None = None,
    backend: str = OSFT_BACKEND_NAME,
    target_patterns: list[str] | None = None,
    seed: int | None = None,
    use_liger: bool | None = None,
    use_processed_dataset: bool | None = None,
    unmask_messages: bool | None = None,
    is_pretraining: bool | None = None,
    block_size: int | None = None,
    document_column_name: str | None = None,
    lr_scheduler: str | None = None,
    warmup_steps: int | None = None,
    lr_scheduler_kwargs: dict[str, str] | None = None,
    beta1: float | None = None,
    beta2: float | None = None,
    eps: float | None = None,
    weight_decay: float | None = None,
    checkpoint_at_epoch: bool | None = None,
    save_final_checkpoint: bool | None = None,
    num_epochs: int | None = None,
    nproc_per_node: str | int | None = None,
    nnodes: int | None = None,
    node_rank: int | None = None,
    rdzv_id: str | int | None = None,
    rdzv_endpoint: str | None = None,
    master_port: int | None = None,
    master_addr: str | None = None,
    wandb_project: str | None = None,
    wandb_entity: str | None = None,
    wandb_run_name: str | None = None,
    tensorboard_log_dir: str | None = None,
    mlflow_tracking_uri: str | None = None,
    mlflow_experiment_name: str | None = None,
    mlflow_run_name: str | None = None,
    trust_remote_code: bool | None = None,
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
    """training_hub's ``osft()``, run as an SFTJob (``algorithm: osft``) on the cluster.

    As ``sft()`` for paths, topology, cluster settings, waiting and errors: SFTParameterError
    names each bad parameter before anything is sent (``unfreeze_rank_ratio`` outside (0, 1],
    ``max_tokens_per_gpu`` below ``max_seq_len``, an SFT-only or unknown keyword, one of
    NOT_RUN_HERE), SFTJobFailedError carries the job's reason.
    """
    given = dict(locals())
    cluster = {key: given[key] for key in ClusterOptions.__dataclass_fields__}
    training = {key: given[key] for key in TRAINING_HUB_OSFT_PARAMS if key != "backend"}
    result: SFTJobResult = OSFTAlgorithm(backend=KubernetesOSFTBackend(**cluster)).train(
        **training, backend=backend, **kwargs
    )
    return result
