"""The instructlab-training 0.16.2 ``TrainingArgs`` field names.

The operator image has no torch, so it cannot import instructlab-training to ask; this copy is
checked against ``TrainingArgs.model_fields`` by tests/training/test_training_args_allowlist.py,
which fails when the library's fields drift.
"""

from __future__ import annotations

INSTRUCTLAB_TRAINING_VERSION = "0.16.2"

TRAINING_ARGS_FIELDS: frozenset[str] = frozenset(
    {
        "model_path",
        "chat_tmpl_path",
        "use_legacy_tmpl",
        "data_path",
        "ckpt_output_dir",
        "data_output_dir",
        "max_seq_len",
        "max_batch_len",
        "num_epochs",
        "effective_batch_size",
        "save_samples",
        "learning_rate",
        "adamw_weight_decay",
        "adamw_betas",
        "adamw_eps",
        "warmup_steps",
        "random_seed",
        "use_dolomite",
        "is_padding_free",
        "checkpoint_at_epoch",
        "accelerate_full_state_at_epoch",
        "mock_data",
        "mock_data_len",
        "deepspeed_options",
        "fsdp_options",
        "distributed_backend",
        "disable_flash_attn",
        "lora",
        "process_data",
        "keep_last_checkpoint_only",
        "pretraining_config",
        "data_process_num_cpu_procs",
        "use_liger",
        "trust_remote_code",
        "log_level",
        "mlflow_tracking_uri",
        "mlflow_experiment_name",
        "mlflow_run_name",
        "wandb_project",
        "wandb_entity",
        "wandb_run_name",
        "tensorboard_log_dir",
        "validation_split",
        "validation_frequency",
        "on_demand_checkpointing",
        "callbacks",
    }
)

# Not accepted in spec.extraArgs: Python objects that cannot travel as JSON.
UNSERIALIZABLE_FIELDS: frozenset[str] = frozenset({"callbacks"})
