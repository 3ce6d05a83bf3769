"""The loss history (progress.LossHistory): bounded, thinned evenly, fed by the reporter as it reads
the metrics log, and no extra publish (the step metrics' rate limit holds)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from sft_core import checkpoints as ck
from sft_core import progress as progress_module
from sft_core.progress import MAX_LOSS_HISTORY, LossHistory, LossPoint, TrainingProgress, loss_history
from sft_reporter.sidecar import VolumeReader, run_loop


def _steps(count: int, *, per_step: int = 4, first: int = 1) -> list[ck.StepRecord]:
    return [
        ck.StepRecord(epoch=0, step=i, samples_seen=per_step * i, avg_loss=round(3 - 0.1 * i, 3), lr=1e-4)
        for i in range(first, first + count)
    ]


def test_small_run_exact_points() -> None:
    """10 steps into 4 points: the stride doubles to 4 (indices 0, 4, 8) and the newest stays."""
    assert [p.to_api() for p in loss_history(_steps(10), max_points=4, max_validation_points=2)] == [
        {"samples": 4, "loss": 2.9, "lr": 0.0001},
        {"samples": 20, "loss": 2.5, "lr": 0.0001},
        {"samples": 36, "loss": 2.1, "lr": 0.0001},
        {"samples": 40, "loss": 2.0, "lr": 0.0001},
    ]


def test_validation_losses_join_their_step_or_stand_alone() -> None:
    """The first validation takes its share (2 of 6): the steps are thinned to 4; the validation
    at 8 samples lost its step to thinning and is a point of its own."""
    validations = [
        ck.ValidationRecord(val_loss=2.5, step=2, samples_seen=8),
        ck.ValidationRecord(val_loss=2.4, step=5, samples_seen=20),
    ]
    points = loss_history(_steps(6), validations, max_points=6, max_validation_points=2)
    assert [p.to_api() for p in points] == [
        {"samples": 4, "loss": 2.9, "lr": 0.0001},
        {"samples": 8, "valLoss": 2.5},
        {"samples": 12, "loss": 2.7, "lr": 0.0001},
        {"samples": 20, "loss": 2.5, "valLoss": 2.4, "lr": 0.0001},
        {"samples": 24, "loss": 2.4, "lr": 0.0001},
    ]


def test_steps_trained_again_after_a_crash_replace_the_later_points() -> None:
    """A resume from an older state logs samples again: the later lines count."""
    again = [
        ck.StepRecord(epoch=0, step=1, samples_seen=12, avg_loss=9.0),
        ck.StepRecord(epoch=0, step=2, samples_seen=16, avg_loss=8.0),
    ]
    points = loss_history(_steps(5) + again)
    assert [(p.samples, p.loss) for p in points] == [(4, 2.9), (8, 2.8), (12, 9.0), (16, 8.0)]


def test_values_that_cannot_be_written_are_left_out() -> None:
    steps = [
        ck.StepRecord(epoch=0, step=1, samples_seen=4, avg_loss=float("nan")),
        ck.StepRecord(epoch=0, step=2, samples_seen=8, avg_loss=1.23456789, lr=float("inf")),
        ck.StepRecord(epoch=0, step=3, samples_seen=12, avg_loss=None),
    ]
    assert [p.to_api() for p in loss_history(steps)] == [{"samples": 8, "loss": 1.23457}]


@pytest.mark.parametrize("validate_every", [None, 10])
def test_a_long_run_stays_bounded_even_and_monotone(validate_every: int | None) -> None:
    """100,000 steps (with two crash rewinds): never more than 256 points at any time, the first
    and the newest step present, samples strictly increasing, the steps evenly spaced."""
    history = LossHistory()
    samples, index, step = 0, 0, 0
    largest = 0
    while index < 100_000:
        index += 1
        step += 1
        samples += 4
        if index in (30_000, 70_000):
            samples -= 400  # resumed from an older state: 100 steps again
        record = ck.StepRecord(epoch=0, step=step, samples_seen=samples, avg_loss=1 + 1 / index, lr=2e-5)
        history.add_step(record)
        if validate_every and step % validate_every == 0:
            history.add_validation(ck.ValidationRecord(val_loss=1.5 + 1 / index, step=step, samples_seen=samples))
        if index % 997 == 0:
            largest = max(largest, len(history.points()))
    points = history.points()
    largest = max(largest, len(points))
    assert largest <= MAX_LOSS_HISTORY
    assert len(points) >= MAX_LOSS_HISTORY // 4
    assert points[0].samples == 4 and points[-1].samples == samples
    assert all(a.samples < b.samples for a, b in zip(points, points[1:]))
    step_samples = [p.samples for p in points if p.loss is not None][:-1]  # the newest is kept off-stride
    gaps = {b - a for a, b in zip(step_samples, step_samples[1:])}
    # Even in steps; the two rewinds shift a few gaps by the 400 re-trained samples.
    assert len({g for g in gaps if all(abs(g - h) != 400 for h in gaps)}) <= 2, sorted(gaps)
    if validate_every:
        assert sum(p.val_loss is not None for p in points) <= progress_module.MAX_VALIDATION_POINTS
        assert sum(p.val_loss is not None for p in points) >= progress_module.MAX_VALIDATION_POINTS // 4
        assert points[-1].val_loss is not None  # the newest validation stays
    # The summary and the CRD schema hold it.
    TrainingProgress(loss_history=points)
    with pytest.raises(ValueError):
        TrainingProgress(loss_history=[LossPoint(samples=i) for i in range(MAX_LOSS_HISTORY + 1)])


def _append(path: Path, *lines: dict) -> None:
    with open(path, "a") as handle:
        for line in lines:
            handle.write(json.dumps(line) + "\n")


def test_reporter_builds_the_history_incrementally_as_a_full_read_would(tmp_path: Path) -> None:
    """Read in pieces (a validation line in the read after its step's) or all at once after a
    restart of the sidecar: the same points."""
    log = ck.metrics_log_path(tmp_path)
    reader = VolumeReader(ckpt_dir=tmp_path, data_dir=tmp_path / "data", num_epochs=1)
    lines = []
    for i in range(1, 601):
        lines.append({"epoch": 0, "step": i, "samples_seen": 2 * i, "avg_loss": 5 / i, "lr": 1e-5 * i})
        if i % 25 == 0:
            lines.append({"val_loss": 6 / i, "val_num_tokens": 10, "step": i})
    for start in range(0, len(lines), 7):
        _append(log, *lines[start : start + 7])
        reader.read()
    incremental = reader.read().loss_history
    fresh = VolumeReader(ckpt_dir=tmp_path, data_dir=tmp_path / "data", num_epochs=1).read().loss_history
    assert incremental == fresh
    assert incremental is not None and len(incremental) <= MAX_LOSS_HISTORY
    assert sum(p.val_loss is not None for p in incremental) == 24  # all 24 validations fit their share
    assert incremental[-1].to_api() == {"samples": 1200, "loss": 0.00833333, "valLoss": 0.01, "lr": 0.006}


class _SimulatedMinutes(threading.Event):
    """The loop's wait between scans: advances a fake clock by the scan interval and lets the
    trainer log a step every 3 s; stops after ``seconds``."""

    def __init__(self, log: Path, seconds: float):
        super().__init__()
        self.log, self.seconds, self.now, self.step = log, seconds, 0.0, 0

    def clock(self) -> float:
        return self.now

    def wait(self, timeout: float | None = None) -> bool:
        self.now += timeout or 0
        self.step += 1
        _append(self.log, {"epoch": 0, "step": self.step, "samples_seen": 4 * self.step, "avg_loss": 3 / self.step})
        if self.step % 10 == 0:
            _append(self.log, {"val_loss": 4 / self.step, "step": self.step})
        if self.now >= self.seconds:
            self.set()
        return self.is_set()


def _writes_in_ten_minutes(tmp_path: Path) -> int:
    tmp_path.mkdir()
    log = ck.metrics_log_path(tmp_path)
    _append(log, {"total_samples": 100_000, "num_batches": 25_000})
    reader = VolumeReader(ckpt_dir=tmp_path, data_dir=tmp_path / "data", num_epochs=1)
    stop = _SimulatedMinutes(log, 600)
    published: list[TrainingProgress] = []
    run_loop(reader, published.append, stop, scan_interval_s=3, min_interval_s=15, clock=stop.clock)
    assert published[-1].loss_history is None or len(published[-1].loss_history) <= MAX_LOSS_HISTORY
    return len(published)


def test_the_history_adds_no_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step (and every 10th a validation) every 3 s for 10 minutes: one write at the start, then
    one per 15 s (the budget), with the history exactly as many as without it."""
    with_history = _writes_in_ten_minutes(tmp_path / "a")
    monkeypatch.setattr(progress_module.LossHistory, "points", lambda self: [])
    without = _writes_in_ten_minutes(tmp_path / "b")
    assert with_history == without == 1 + 600 // 15  # the start, then every 15 s (the last one at the stop)
