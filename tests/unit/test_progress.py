"""Exact-output tests of progress derivation (pure: a CheckpointTree in, TrainingProgress out)."""

from __future__ import annotations

from datetime import datetime, timezone

from sft_core import checkpoints as ck
from sft_core.progress import Stage, summarize_progress

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def _tree(**overrides) -> ck.CheckpointTree:
    fields = dict(
        root="/ckpt",
        hf_checkpoints=[],
        full_states=[],
        stray_full_state_entries=[],
        completion=None,
        data_ready=None,
        samples_per_epoch=None,
    )
    fields.update(overrides)
    return ck.CheckpointTree(**fields)


DATA_READY = ck.DataReadyMarker(
    fingerprint="f", data_dir="/ckpt/data", num_samples=8, created_at=datetime(2023, 11, 14, 22, 0, tzinfo=timezone.utc)
)
RUN = ck.RunRecord(
    started_at=datetime(2023, 11, 14, 22, 10, tzinfo=timezone.utc),
    start_epoch=0,
    steps_into_epoch=0,
    start_samples_seen=0,
    metrics_log_offset=0,
    resumed_from=None,
)
TOTALS = ck.TotalsRecord(total_samples=8, num_batches=2)


def _step(epoch: int, samples: int, ts: str = "2023-11-14T22:20:00") -> ck.StepRecord:
    return ck.StepRecord(
        epoch=epoch, step=1, samples_seen=samples, avg_loss=2.123456, overall_throughput=4.0, timestamp=ts
    )


def test_fresh_volume_is_initializing() -> None:
    progress = summarize_progress(
        _tree(), num_epochs=3, last_step=None, last_totals=None, runs=[], data_dir_exists=False
    )
    assert progress.to_api() == {
        "stage": "Initializing",
        "epoch": 1,
        "numEpochs": 3,
        "epochDisplay": "1/3",
        "samplesSeen": 0,
        "percent": 0,
        "percentDisplay": "0%",
        "checkpoints": [],
        "resumable": False,
    }


def test_epoch_is_one_based_before_the_first_step() -> None:
    # Processing data, then the first run loading: epoch 1 of N, never 0/N.
    processing = summarize_progress(
        _tree(), num_epochs=3, last_step=None, last_totals=None, runs=[], data_dir_exists=True
    )
    loading = summarize_progress(
        _tree(data_ready=DATA_READY), num_epochs=3, last_step=None, last_totals=TOTALS, runs=[RUN], data_dir_exists=True
    )
    assert [(p.stage, p.epoch, p.epoch_display) for p in (processing, loading)] == [
        (Stage.PROCESSING_DATA, 1, "1/3"),
        (Stage.INITIALIZING, 1, "1/3"),
    ]


def test_resumed_run_shows_the_epoch_it_starts_in_until_it_logs() -> None:
    # Epoch 1 (0-based 0) ended with its last step logged and its full state saved; the restart's
    # run starts in 0-based epoch 1, i.e. epoch 2 of 3, before its first step.
    resumed = RUN.model_copy(
        update={
            "started_at": datetime(2023, 11, 14, 22, 30, tzinfo=timezone.utc),
            "start_epoch": 1,
            "start_samples_seen": 8,
            "resumed_from": "epoch_0",
        }
    )
    progress = summarize_progress(
        _tree(data_ready=DATA_READY),
        num_epochs=3,
        last_step=_step(0, 8, ts="2023-11-14T22:20:00"),
        last_totals=TOTALS,
        runs=[RUN, resumed],
        data_dir_exists=True,
    )
    assert (progress.stage, progress.epoch, progress.epoch_display, progress.samples_seen) == (
        Stage.INITIALIZING,
        2,
        "2/3",
        8,
    )


def test_data_dir_without_marker_is_processing_data() -> None:
    progress = summarize_progress(
        _tree(), num_epochs=3, last_step=None, last_totals=None, runs=[], data_dir_exists=True
    )
    assert progress.stage is Stage.PROCESSING_DATA


def test_training_mid_run_with_checkpoints() -> None:
    tree = _tree(
        data_ready=DATA_READY,
        samples_per_epoch=8,
        hf_checkpoints=[
            ck.HfCheckpoint(name="samples_8", samples=8, epoch=0, mtime=T0, complete=True),
            ck.HfCheckpoint(name="samples_12", samples=12, epoch=1, mtime=T0 + 5, complete=True),
        ],
        full_states=[
            ck.FullState(
                name="epoch_0",
                epoch=0,
                complete=True,
                mtime=T0 + 1,
                metadata=ck.FullStateMetadata(current_epoch=0, samples_seen=8),
            ),
        ],
    )
    progress = summarize_progress(
        tree, num_epochs=3, last_step=_step(1, 12), last_totals=TOTALS, runs=[RUN], data_dir_exists=True
    )
    assert progress.to_api() == {
        "stage": "Training",
        "epoch": 2,
        "numEpochs": 3,
        "epochDisplay": "2/3",
        "samplesSeen": 12,
        "totalSamples": 24,
        "percent": 50,
        "percentDisplay": "50%",
        "lastLoss": "2.1235",
        "throughput": "4.00",
        "etaSeconds": 3,
        "checkpoints": [
            {
                "name": "samples_8",
                "path": "hf_format/samples_8",
                "samples": 8,
                "epoch": 1,
                "time": "2023-11-14T22:13:20Z",
            },
            {
                "name": "samples_12",
                "path": "hf_format/samples_12",
                "samples": 12,
                "epoch": 2,
                "time": "2023-11-14T22:13:25Z",
            },
        ],
        "latestCheckpoint": "samples_12",
        "latestFullState": {
            "name": "epoch_0",
            "path": "full_state/epoch_0",
            "epoch": 1,
            "samples": 8,
            "midEpoch": False,
            "time": "2023-11-14T22:13:21Z",
        },
        "resumable": True,
        "lastUpdateTime": "2023-11-14T22:20:00Z",
    }


def test_incomplete_checkpoint_means_saving_and_is_not_listed() -> None:
    tree = _tree(
        data_ready=DATA_READY,
        hf_checkpoints=[ck.HfCheckpoint(name="samples_8", samples=8, epoch=0, mtime=T0, complete=False)],
        full_states=[ck.FullState(name="epoch_0", epoch=0, complete=False, mtime=T0, metadata=None)],
    )
    progress = summarize_progress(
        tree, num_epochs=1, last_step=_step(0, 8), last_totals=TOTALS, runs=[RUN], data_dir_exists=True
    )
    assert (progress.stage, progress.checkpoints, progress.resumable) == (Stage.SAVING, [], False)


def test_percent_stays_below_100_until_the_completion_marker() -> None:
    tree = _tree(data_ready=DATA_READY)
    progress = summarize_progress(
        tree, num_epochs=1, last_step=_step(0, 8), last_totals=TOTALS, runs=[RUN], data_dir_exists=True
    )
    assert (progress.percent, progress.stage) == (99, Stage.TRAINING)

    done = tree.model_copy(
        update={
            "completion": ck.CompletionMarker(
                finished_at=datetime(2023, 11, 14, 22, 30, tzinfo=timezone.utc),
                num_epochs=1,
                samples_seen=8,
                final_checkpoint="hf_format/samples_8",
            )
        }
    )
    progress = summarize_progress(
        done, num_epochs=1, last_step=_step(0, 8), last_totals=TOTALS, runs=[RUN], data_dir_exists=True
    )
    assert (progress.stage, progress.percent, progress.epoch, progress.eta_seconds, progress.last_update_time) == (
        Stage.COMPLETED,
        100,
        1,
        0,
        "2023-11-14T22:30:00Z",
    )


def test_step_from_an_earlier_run_keeps_position_but_not_stage() -> None:
    # A restart: the last logged step predates the newest run, which is still loading.
    tree = _tree(data_ready=DATA_READY)
    progress = summarize_progress(
        tree,
        num_epochs=2,
        last_step=_step(0, 4, ts="2023-11-14T22:05:00"),
        last_totals=TOTALS,
        runs=[RUN],
        data_dir_exists=True,
    )
    assert (progress.stage, progress.samples_seen, progress.epoch) == (Stage.INITIALIZING, 4, 1)


def test_summary_is_deterministic_for_an_unchanged_volume() -> None:
    tree = _tree(data_ready=DATA_READY)
    args = dict(num_epochs=2, last_step=_step(0, 4), last_totals=TOTALS, runs=[RUN], data_dir_exists=True)
    assert summarize_progress(tree, **args) == summarize_progress(tree, **args)
