"""The reporter's publish policy and its incremental read of a real (temporary) volume."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from sft_operator import checkpoints as ck
from sft_operator.progress import Stage, TrainingProgress
from sft_operator.reporter import VolumeReader, run_loop, should_publish


def _progress(**fields) -> TrainingProgress:
    return TrainingProgress(num_epochs=2, **fields)


def test_first_summary_is_published() -> None:
    assert should_publish(None, _progress(), seconds_since_publish=0, min_interval_s=15)


def test_unchanged_summary_is_never_published() -> None:
    same = _progress(samples_seen=4)
    assert not should_publish(same, _progress(samples_seen=4), seconds_since_publish=1e6, min_interval_s=15)


def test_step_metrics_are_rate_limited() -> None:
    old, new = _progress(samples_seen=4), _progress(samples_seen=8, last_loss="1.0")
    assert not should_publish(old, new, seconds_since_publish=5, min_interval_s=15)
    assert should_publish(old, new, seconds_since_publish=15, min_interval_s=15)


def test_milestones_are_published_at_once() -> None:
    old = _progress(stage=Stage.TRAINING)
    assert should_publish(old, _progress(stage=Stage.COMPLETED), seconds_since_publish=0, min_interval_s=15)
    assert should_publish(old, _progress(stage=Stage.TRAINING, epoch=2), seconds_since_publish=0,
                          min_interval_s=15)


def _append(path: Path, *lines: dict) -> None:
    with open(path, "a") as handle:
        for line in lines:
            handle.write(json.dumps(line) + "\n")


def test_volume_reader_follows_the_metrics_log(tmp_path: Path) -> None:
    log = ck.metrics_log_path(tmp_path)
    reader = VolumeReader(ckpt_dir=tmp_path, data_dir=tmp_path / "data", num_epochs=2)
    assert reader.read().stage is Stage.INITIALIZING

    (tmp_path / "data").mkdir()
    assert reader.read().stage is Stage.PROCESSING_DATA

    ck.write_data_ready(tmp_path, ck.DataReadyMarker(fingerprint="f", data_dir=str(tmp_path / "data"),
                                                     num_samples=8, created_at="2023-11-14T22:00:00Z"))
    _append(log, {"model_name_or_path": "/m"}, {"total_samples": 8, "num_batches": 2},
            {"epoch": 0, "step": 1, "samples_seen": 4, "avg_loss": 3.0, "overall_throughput": 2.0})
    first = reader.read()
    assert (first.stage, first.samples_seen, first.total_samples, first.percent, first.last_loss) == (
        Stage.TRAINING, 4, 16, 25, "3.0000")

    with open(log, "a") as handle:  # a line still being written is not read yet
        handle.write('{"epoch": 1, "step": 2, "samples_seen": 12')
    assert reader.read().samples_seen == 4
    with open(log, "a") as handle:
        handle.write(', "avg_loss": 1.5}\n')
    second = reader.read()
    assert (second.samples_seen, second.epoch, second.last_loss) == (12, 2, "1.5000")


def test_run_loop_publishes_changes_and_a_final_state(tmp_path: Path) -> None:
    reader = VolumeReader(ckpt_dir=tmp_path, data_dir=tmp_path / "data", num_epochs=1)
    published: list[TrainingProgress] = []
    stop = threading.Event()

    def publish(progress: TrainingProgress) -> None:
        published.append(progress)
        if len(published) == 1:
            (tmp_path / "data").mkdir()  # the volume changes between two scans
        else:
            stop.set()

    run_loop(reader, publish, stop, scan_interval_s=0.01, min_interval_s=0)
    assert [p.stage for p in published] == [Stage.INITIALIZING, Stage.PROCESSING_DATA]


def test_run_loop_survives_a_failing_publish(tmp_path: Path) -> None:
    reader = VolumeReader(ckpt_dir=tmp_path, data_dir=tmp_path / "data", num_epochs=1)
    calls: list[int] = []
    stop = threading.Event()

    def publish(progress: TrainingProgress) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("apiserver hiccup")
        stop.set()

    run_loop(reader, publish, stop, scan_interval_s=0.01, min_interval_s=0)
    assert len(calls) == 2  # retried on the next scan, not given up
