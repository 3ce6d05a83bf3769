"""Exact resume (the upstream mid-epoch bug), the run outcome, data fingerprints, waits."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from sft_core import checkpoints as ck
from sft_trainer import data_once, outcome, resume
from sft_trainer.errors import PeerUnavailable, TrainingFailed
from sft_trainer.rendezvous import wait_reachable

T = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _meta(**values) -> ck.FullStateMetadata:
    return ck.FullStateMetadata.model_validate(values)


def _run(start_epoch: int, steps_into_epoch: int, start_samples: int) -> ck.RunRecord:
    return ck.RunRecord(
        started_at=T,
        start_epoch=start_epoch,
        steps_into_epoch=steps_into_epoch,
        start_samples_seen=start_samples,
        metrics_log_offset=0,
        resumed_from=None,
    )


def _log(num_batches: int | None, steps: list[tuple[int, int, int]]) -> ck.MetricsLog:
    totals = [ck.TotalsRecord(total_samples=16, num_batches=num_batches)] if num_batches else []
    return ck.MetricsLog(
        hparams=[],
        totals=totals,
        validations=[],
        other=[],
        skipped_lines=0,
        end_offset=0,
        steps=[ck.StepRecord(epoch=e, step=s, samples_seen=n) for e, s, n in steps],
    )


# The issue's case: 4 steps (of 4 samples) per epoch, a run from epoch 0 saved at epoch 5,
# global_step 22. Upstream would resume at epoch 10, step 23.
def test_issue_example_save_after_the_step_was_applied() -> None:
    saved = _meta(current_epoch=5, samples_seen=88, global_step=22)
    log = _log(4, [(5, 21, 84)])
    assert resume.normalize_mid_epoch(saved, _run(0, 0, 0), log) == _meta(
        current_epoch=5,
        samples_seen=88,
        global_step=2,
        sft_steps_into_epoch=2,
        sft_original_global_step=22,
        sft_step_applied=True,
    )


def test_issue_example_save_before_the_step_was_applied() -> None:
    # The usual case: the trigger is checked before each forward/backward; step 22 is redone.
    saved = _meta(current_epoch=5, samples_seen=84, global_step=22)
    log = _log(4, [(5, 21, 84)])
    normalized = resume.normalize_mid_epoch(saved, _run(0, 0, 0), log)
    assert (normalized.global_step, normalized.step_applied) == (1, False)


def test_save_in_a_resumed_run_counts_from_its_start_epoch() -> None:
    # The run resumed at epoch 3 after 1 step; its global_step counts from epoch 3's start.
    saved = _meta(current_epoch=4, samples_seen=72, global_step=6)
    log = _log(4, [(3, 2, 56), (3, 3, 60), (3, 4, 64), (4, 5, 68)])
    normalized = resume.normalize_mid_epoch(saved, _run(3, 1, 52), log)
    assert (normalized.global_step, normalized.step_applied) == (2, True)


def test_save_at_the_first_step_of_a_run_uses_the_start_samples() -> None:
    saved = _meta(current_epoch=3, samples_seen=52, global_step=2)
    normalized = resume.normalize_mid_epoch(saved, _run(3, 1, 52), _log(4, []))
    assert (normalized.global_step, normalized.step_applied) == (1, False)


def test_normalized_and_epoch_end_metadata_are_left_alone() -> None:
    done = _meta(current_epoch=2, samples_seen=48)
    assert resume.normalize_mid_epoch(done, None, _log(None, [])) is done
    normalized = _meta(current_epoch=2, samples_seen=40, global_step=1, sft_steps_into_epoch=1)
    assert resume.normalize_mid_epoch(normalized, None, _log(None, [])) is normalized


def test_normalize_refuses_what_it_cannot_place() -> None:
    with pytest.raises(TrainingFailed, match="no steps-per-epoch"):
        resume.normalize_mid_epoch(
            _meta(current_epoch=2, samples_seen=40, global_step=9), _run(0, 0, 0), _log(None, [])
        )
    with pytest.raises(TrainingFailed, match="does not fit its run"):
        resume.normalize_mid_epoch(_meta(current_epoch=1, samples_seen=40, global_step=20), _run(0, 0, 0), _log(4, []))


def test_resume_point() -> None:
    def state(meta):
        return ck.FullState(name="epoch_2", epoch=2, complete=True, mtime=0.0, metadata=meta)

    assert resume.resume_point(None) == resume.ResumePoint(
        start_epoch=0, steps_into_epoch=0, start_samples_seen=0, resumed_from=None
    )
    assert resume.resume_point(state(_meta(current_epoch=2, samples_seen=48))) == resume.ResumePoint(
        start_epoch=3, steps_into_epoch=0, start_samples_seen=48, resumed_from="epoch_2"
    )
    assert resume.resume_point(
        state(_meta(current_epoch=2, samples_seen=40, global_step=1, sft_steps_into_epoch=1))
    ) == resume.ResumePoint(start_epoch=2, steps_into_epoch=1, start_samples_seen=40, resumed_from="epoch_2")
    with pytest.raises(ValueError, match="normalize"):
        resume.resume_point(state(_meta(current_epoch=2, samples_seen=40, global_step=9)))


def test_prepare_resume_on_disk(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    root = tmp_path
    state = root / "full_state" / "epoch_1"
    state.mkdir(parents=True)
    torch.save({"current_epoch": 1, "samples_seen": 24, "global_step": 7}, state / "training_metadata.json")
    (root / "full_state" / "epoch_2").mkdir()  # torn save: no metadata
    ck.append_run_record(root, _run(0, 0, 0))
    (root / ck.METRICS_LOG_FILE).write_text(
        '{"total_samples": 16, "num_batches": 4}\n{"epoch": 1, "step": 6, "samples_seen": 24}\n'
    )
    record = resume.prepare_resume(root, now=lambda: T)
    assert record == ck.RunRecord(
        started_at=T,
        start_epoch=1,
        steps_into_epoch=2,
        start_samples_seen=24,
        metrics_log_offset=os.path.getsize(root / ck.METRICS_LOG_FILE),
        resumed_from="epoch_1",
    )
    assert torch.load(state / "training_metadata.json") == {
        "current_epoch": 1,
        "samples_seen": 24,
        "global_step": 2,
        "sft_steps_into_epoch": 2,
        "sft_original_global_step": 7,
        "sft_step_applied": False,
    }
    assert (root / "sft-operator" / "set-aside" / "epoch_2-20260101T000000").is_dir()
    assert ck.read_run_records(root)[-1] == record


def _tree(*states: ck.FullState) -> ck.CheckpointTree:
    return ck.CheckpointTree(
        root="/r",
        hf_checkpoints=[],
        full_states=list(states),
        stray_full_state_entries=[],
        completion=None,
        data_ready=None,
        samples_per_epoch=None,
    )


def _state(epoch: int, mtime: float = 0.0, **meta) -> ck.FullState:
    return ck.FullState(
        name=f"epoch_{epoch}", epoch=epoch, complete=True, mtime=mtime, metadata=_meta(current_epoch=epoch, **meta)
    )


def test_outcome_tells_preempted_from_finished() -> None:
    final = _state(2, samples_seen=48)
    mid = _state(1, 5.0, samples_seen=20, global_step=3)
    assert (
        outcome.decide_outcome(None, _tree(_state(0, samples_seen=16), _state(1, samples_seen=32), final), 3, True)
        is outcome.Outcome.FINISHED
    )
    assert outcome.decide_outcome(None, _tree(_state(0, samples_seen=16), mid), 3, True) is outcome.Outcome.PREEMPTED
    # The same mid-epoch state as before the run: nothing was saved by this run.
    assert outcome.decide_outcome(mid, _tree(_state(0, samples_seen=16), mid), 3, True) is outcome.Outcome.UNFINISHED
    assert outcome.decide_outcome(mid, _tree(mid), 3, False) is outcome.Outcome.FINISHED
    assert outcome.already_finished(_tree(final), 3)
    assert not outcome.already_finished(_tree(final), 4)


def test_data_fingerprint_changes_with_inputs() -> None:
    args = {"data_path": "/d", "model_path": "/m", "max_seq_len": 64, "learning_rate": 1.0}
    base = data_once.data_fingerprint(args, 10, 1, "0.16.2")
    assert base == data_once.data_fingerprint({**args, "learning_rate": 2.0}, 10, 1, "0.16.2")
    assert (
        len(
            {
                base,
                data_once.data_fingerprint({**args, "max_seq_len": 65}, 10, 1, "0.16.2"),
                data_once.data_fingerprint(args, 11, 1, "0.16.2"),
                data_once.data_fingerprint(args, 10, 2, "0.16.2"),
                data_once.data_fingerprint(args, 10, 1, "0.17.0"),
            }
        )
        == 5
    )


def test_wait_reachable_times_out_with_the_variable_named() -> None:
    clock = iter(range(0, 100))
    with pytest.raises(PeerUnavailable) as raised:
        wait_reachable(
            "127.0.0.1", 1, timeout=3, env_name="PET_RDZV_ENDPOINT", sleep=lambda _: None, monotonic=lambda: next(clock)
        )
    assert raised.value.message.startswith("PET_RDZV_ENDPOINT: rendezvous endpoint 127.0.0.1:1 unreachable for 3s")


def test_completion_marker_names_the_final_checkpoint() -> None:
    hf = [
        ck.HfCheckpoint(name=name, samples=samples, epoch=None, mtime=0.0, complete=complete)
        for name, samples, complete in [("samples_16", 16, True), ("samples_48", 48, True), ("samples_64", 64, False)]
    ]
    tree = _tree(_state(2, samples_seen=48)).model_copy(update={"hf_checkpoints": hf})
    assert outcome.completion_marker(tree, 3, T) == ck.CompletionMarker(
        finished_at=T, num_epochs=3, samples_seen=48, final_checkpoint="hf_format/samples_48"
    )
    assert outcome.completion_marker(_tree(), 3, T) == ck.CompletionMarker(
        finished_at=T, num_epochs=3, samples_seen=0, final_checkpoint=None
    )
