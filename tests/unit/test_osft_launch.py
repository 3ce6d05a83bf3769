"""The launcher's OSFT side, pure parts: training_hub osft() names -> mini-trainer's TrainingArgs
(exact), config errors naming the field, the exact-resume loader and the finished-run check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sft_models import models
from sft_trainer import osft_launch, osft_worker
from sft_trainer.errors import ConfigError, TrainingFailed

RAW = {
    "model_path": "/models/tiny",
    "data_path": "/data/train.jsonl",
    "ckpt_output_dir": "/checkpoints",
    "data_output_dir": "/checkpoints/data",
    "unfreeze_rank_ratio": 0.25,
    "num_epochs": 3,
    "effective_batch_size": 16,
    "learning_rate": 2e-5,
    "max_seq_len": 1024,
    "max_tokens_per_gpu": 4096,
    "warmup_steps": 10,
    "checkpoint_at_epoch": True,
    "beta1": 0.9,
    "beta2": 0.95,
    "eps": 1e-8,
    "weight_decay": 0.0,
    "target_patterns": ["q_proj"],
    "seed": 7,
    "lr_scheduler": "cosine",
    "use_liger": True,
    "wandb_project": "p",
}


def test_trainer_kwargs_rename_as_training_hub_does() -> None:
    args = osft_launch.parse_args(RAW, cpu=False)
    assert osft_launch.trainer_kwargs(args, Path("/checkpoints/data/data.jsonl")) == {
        "model_name_or_path": "/models/tiny",
        "data_path": "/checkpoints/data/data.jsonl",
        "output_dir": "/checkpoints",
        "osft_unfreeze_rank_ratio": 0.25,
        "max_epochs": 3,
        "batch_size": 16,
        "learning_rate": 2e-5,
        "max_tokens_per_gpu": 4096,
        "num_warmup_steps": 10,
        "checkpoint_at_epoch": True,
        "beta1": 0.9,
        "beta2": 0.95,
        "eps": 1e-8,
        "weight_decay": 0.0,
        "osft_target_patterns": ["q_proj"],
        "seed": 7,
        "lr_scheduler": "cosine",
        "use_liger_kernels": True,
        "wandb_project": "p",
        "osft": True,
        "training_mode": "epoch",
        "on_demand_checkpointing": True,
    }


def test_the_operator_renders_what_the_launcher_accepts() -> None:
    spec = models.parse_spec(
        {
            "algorithm": "osft",
            "unfreezeRankRatio": 0.5,
            "modelPath": "m",
            "dataPath": "/d",
            "numEpochs": 1,
            "effectiveBatchSize": 4,
            "learningRate": 1e-4,
            "maxSeqLen": 64,
            "targetPatterns": ["q"],
            "seed": 1,
            "lrScheduler": "linear",
            "lrSchedulerKwargs": {"a": 1},
            "saveFinalCheckpoint": True,
            "useLiger": False,
            "mlflowTrackingUri": "http://m",
            "checkpoints": {"claim": {"size": "1Gi"}},
        }
    )
    raw = spec.training_config("job", "ns")["trainingArgs"]
    assert osft_launch.parse_args(raw, cpu=True).model_dump(exclude_none=True) == raw


@pytest.mark.parametrize(
    ("change", "cpu", "message"),
    [
        (
            {"unfreeze_rank_ratio": 1.5},
            False,
            "trainingArgs.unfreeze_rank_ratio: Input should be less than or equal to 1",
        ),
        ({"unfreeze_rank_ratio": None}, False, "trainingArgs.unfreeze_rank_ratio: Input should be a valid number"),
        ({"save_samples": 10}, False, "trainingArgs.save_samples: unknown OSFT (training_hub osft()) parameter"),
        (
            {"max_tokens_per_gpu": 512},
            False,
            "trainingArgs.max_tokens_per_gpu: 512 is below max_seq_len 1024: one full sequence must fit on a GPU",
        ),
        (
            {"use_liger": True},
            True,
            "trainingArgs.use_liger: Liger kernels need CUDA: not in CPU mode (SFT_DEVICE=cpu)",
        ),
    ],
)
def test_bad_osft_config_names_the_field(change: dict, cpu: bool, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        osft_launch.parse_args({**RAW, **change}, cpu=cpu)
    assert str(info.value) == message


def test_num_epochs_must_match_the_config() -> None:
    with pytest.raises(ConfigError, match=r"^trainingArgs.num_epochs: 3 differs from numEpochs=2$"):
        osft_launch.build({**RAW, "use_liger": None}, cpu=True, num_epochs=2)


def _aligned(loader, *, target: int, done: int, epochs: int) -> list[list]:
    """What upstream's train() loop keeps of each epoch's iteration: its skip (mini-trainer 0.9.0,
    train.py) replayed over the aligned loader."""
    kept_per_epoch = []
    resume_target = target
    aligned = osft_worker.ResumeAlignedLoader(loader, target=target, done=done)
    for _ in range(epochs):
        skipped, kept = 0, []
        for batch in aligned:
            if resume_target is not None:
                skipped += 1
                if skipped <= resume_target:
                    continue
                resume_target = None
            kept.append(batch)
        kept_per_epoch.append(kept)
    return kept_per_epoch


def test_resume_in_epoch_2_trains_the_rest_of_it_then_every_epoch_whole() -> None:
    batches = list("abcdef")  # 6 steps an epoch; saved after 6 + 2 steps (epoch 2, 2 batches in)
    assert _aligned(batches, target=8, done=2, epochs=2) == [list("cdef"), list("abcdef")]


def test_resume_saved_after_an_epochs_last_step_skips_only_that_epoch() -> None:
    batches = list("abcd")  # saved after step 8 = the end of epoch 2, still counted as epoch 2
    assert _aligned(batches, target=8, done=4, epochs=2) == [[], list("abcd")]


def test_resume_in_epoch_1_is_upstreams_own_skip() -> None:
    assert _aligned(list("abcd"), target=1, done=1, epochs=2) == [list("bcd"), list("abcd")]


def test_upstream_alone_skips_every_epoch_after_a_resume_in_epoch_2() -> None:
    # The bug the loader works around: without it, target 8 > 6 batches skips both epochs whole.
    kept, resume_target = [], 8
    for _ in range(2):
        skipped = 0
        for batch in list("abcdef"):
            if resume_target is not None:
                skipped += 1
                if skipped <= resume_target:
                    continue
                resume_target = None
            kept.append(batch)
    assert kept == []


def test_the_loader_keeps_len_and_sampler() -> None:
    class Loader(list):
        sampler = "the sampler"

    aligned = osft_worker.ResumeAlignedLoader(Loader("abc"), target=4, done=1)
    assert (len(aligned), aligned.sampler) == (3, "the sampler")


@pytest.mark.parametrize(("step", "epoch", "per_epoch", "done"), [(17, 1, 12, 5), (24, 1, 12, 12), (0, 0, 12, 0)])
def test_first_epoch_skip(step: int, epoch: int, per_epoch: int, done: int) -> None:
    assert osft_worker.first_epoch_skip(step, epoch, per_epoch) == done


def test_a_state_that_does_not_fit_its_epoch_is_refused() -> None:
    with pytest.raises(osft_worker.ResumeError, match="full state at step 30 does not fall in epoch 2 of 12 steps"):
        osft_worker.first_epoch_skip(30, 1, 12)


def _metrics(root: Path, steps: list[tuple[int, int]]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "training_metrics_1.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "step": step,
                    "epoch": epoch,
                    "steps_per_epoch": 4,
                    "loss": 1.0,
                    "total_samples_accumulated": 2.0 * step,
                }
            )
            + "\n"
            for step, epoch in steps
        )
    )


def test_finished_only_when_the_last_epochs_last_step_is_logged(tmp_path: Path) -> None:
    _metrics(tmp_path, [(7, 1), (8, 1)])
    osft_launch.check_finished(tmp_path, 1, num_epochs=2)
    with pytest.raises(
        TrainingFailed,
        match=r"^mini-trainer exited 0 after step 8 of 12 \(epoch 2 of 3\) "
        "without saving a full state$",
    ):
        osft_launch.check_finished(tmp_path, 1, num_epochs=3)
    with pytest.raises(TrainingFailed, match="has no step: training did not run"):
        osft_launch.check_finished(tmp_path, 0, num_epochs=3)


def _hf(root: Path, name: str, weights: bool = True) -> None:
    (root / "hf_format" / name).mkdir(parents=True)
    (root / "hf_format" / name / "config.json").write_text("{}")
    if weights:
        (root / "hf_format" / name / "model.safetensors").write_bytes(b"x")


def test_a_run_finished_before_without_its_marker(tmp_path: Path) -> None:
    from sft_core import checkpoints

    (tmp_path / "training_metrics_0.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "step": step,
                    "epoch": (step - 1) // 4,
                    "steps_per_epoch": 4,
                    "loss": 1.0,
                    "total_samples_accumulated": 2.0 * step,
                }
            )
            + "\n"
            for step in range(1, 9)
        )
    )
    _hf(tmp_path, "samples_16.0", weights=False)  # the final save cut short
    tree = checkpoints.scan_checkpoints(tmp_path)
    assert not osft_launch.finished_before(tree, tmp_path, num_epochs=2)
    (tmp_path / "hf_format" / "samples_16.0" / "model.safetensors").write_bytes(b"x")
    tree = checkpoints.scan_checkpoints(tmp_path)
    assert osft_launch.finished_before(tree, tmp_path, num_epochs=2)
    assert not osft_launch.finished_before(tree, tmp_path, num_epochs=3)  # 8 of 12 steps
    assert not osft_launch.finished_before(checkpoints.scan_checkpoints(tmp_path / "empty"), tmp_path / "empty", 2)


def test_without_flash_attn_a_gpu_run_selects_sdpa_through_minitrainers_switch(monkeypatch) -> None:
    import os

    monkeypatch.delenv("TESTING", raising=False)
    monkeypatch.setenv("CHECKPOINT_TRIGGER_FILENAME", "checkpoint_requested")  # mini-trainer's import-time default
    monkeypatch.setattr(osft_launch, "flash_attn_installed", lambda: False)
    with osft_launch.launcher_side(cpu=False):
        assert os.environ["TESTING"] == "true"
    assert "TESTING" not in os.environ
    monkeypatch.setattr(osft_launch, "flash_attn_installed", lambda: True)
    with osft_launch.launcher_side(cpu=False):
        assert "TESTING" not in os.environ


def test_a_trigger_file_the_workers_would_not_watch_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("CHECKPOINT_TRIGGER_FILENAME", "sft-checkpoint-requested-other-job")
    with pytest.raises(RuntimeError, match="mini-trainer's trigger file is .*checkpoint_requested"):
        with osft_launch.launcher_side(cpu=True):
            pass
