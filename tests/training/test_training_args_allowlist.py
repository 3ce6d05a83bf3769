"""The operator's copy of the TrainingArgs field names equals the installed library's."""

from __future__ import annotations

import importlib.metadata

import pytest

from sft_models.training_args import INSTRUCTLAB_TRAINING_VERSION, TRAINING_ARGS_FIELDS

pytestmark = pytest.mark.training


def test_allow_list_matches_training_args() -> None:
    from instructlab.training.config import TrainingArgs

    assert importlib.metadata.version("instructlab-training") == INSTRUCTLAB_TRAINING_VERSION
    assert TRAINING_ARGS_FIELDS == frozenset(TrainingArgs.model_fields)


def test_spec_training_args_are_accepted_by_the_library() -> None:
    """What the operator renders constructs a real TrainingArgs (no field lost, none unknown)."""
    from instructlab.training.config import TrainingArgs

    from sft_models.models import parse_spec

    spec = parse_spec(
        {
            "modelPath": "m",
            "dataPath": "/d.jsonl",
            "numEpochs": 2,
            "effectiveBatchSize": 8,
            "learningRate": 1e-5,
            "maxSeqLen": 256,
            "isPretraining": True,
            "blockSize": 128,
            "validationSplit": 0.1,
            "validationFrequency": 3,
            "extraArgs": {"keep_last_checkpoint_only": True, "lora": {"rank": 4}},
            "checkpoints": {"existingClaim": "c"},
        }
    )
    kwargs = spec.training_args()
    args = TrainingArgs(**kwargs)
    assert args.adamw_betas == (0.9, 0.95)
    assert args.max_batch_len == 256
    assert args.pretraining_config is not None and args.pretraining_config.block_size == 128
    assert args.fsdp_options.sharding_strategy.value == "HYBRID_SHARD"
    assert set(kwargs) <= set(TrainingArgs.model_fields)
