"""The reporter's publish policy and its incremental read of a real (temporary) volume."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

from sft_core import checkpoints as ck
from sft_core import contract
from sft_core.progress import FullStateInfo, Stage, TrainingProgress
from sft_reporter.sidecar import (
    VolumeReader,
    run_loop,
    should_publish,
    shutdown_wait_from_env,
    trainer_exited_check,
)


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
    assert should_publish(old, _progress(stage=Stage.TRAINING, epoch=2), seconds_since_publish=0, min_interval_s=15)


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

    ck.write_data_ready(
        tmp_path,
        ck.DataReadyMarker(
            fingerprint="f", data_dir=str(tmp_path / "data"), num_samples=8, created_at="2023-11-14T22:00:00Z"
        ),
    )
    _append(
        log,
        {"model_name_or_path": "/m"},
        {"total_samples": 8, "num_batches": 2},
        {"epoch": 0, "step": 1, "samples_seen": 4, "avg_loss": 3.0, "overall_throughput": 2.0},
    )
    first = reader.read()
    assert (first.stage, first.samples_seen, first.total_samples, first.percent, first.last_loss) == (
        Stage.TRAINING,
        4,
        16,
        25,
        "3.0000",
    )

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


# --- Shutdown (issue 15, finding 7): the trainer's last save reaches the status ---------------


class FakeClock:
    """Monotonic time that advances only when the loop sleeps; events fire at given times."""

    def __init__(self, events: dict[float, Callable[[], None]] | None = None):
        self.now = 0.0
        self.events = sorted((events or {}).items())

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        while self.events and self.events[0][0] <= self.now:
            self.events.pop(0)[1]()


class ScriptedVolume:
    """A reader whose summary the test changes, as the trainer would change the volume."""

    def __init__(self, progress: TrainingProgress):
        self.progress = progress
        self.reads = 0

    def read(self) -> TrainingProgress:
        self.reads += 1
        return self.progress


OLD_STATE = FullStateInfo(name="epoch_0", path="full_state/epoch_0", epoch=1, samples=8, time="2023-11-14T22:13:21Z")
ON_DEMAND = FullStateInfo(
    name="epoch_1", path="full_state/epoch_1", epoch=2, samples=14, mid_epoch=True, time="2023-11-14T22:20:07Z"
)


def _training(samples: int, full_state: FullStateInfo) -> TrainingProgress:
    return _progress(stage=Stage.TRAINING, epoch=2, samples_seen=samples, latest_full_state=full_state, resumable=True)


def test_stop_waits_for_the_trainer_and_publishes_its_on_demand_checkpoint() -> None:
    # SIGTERM reaches both containers at once. The trainer logs one more step (rate limited: not
    # worth a publish on its own), saves its on-demand full state, exits and writes its marker;
    # the reporter publishes that at once, and only then stops.
    volume = ScriptedVolume(_training(12, OLD_STATE))
    exited = threading.Event()
    stop = threading.Event()
    stop.set()  # the signal came before the first scan of this test

    def one_more_step() -> None:
        volume.progress = _training(14, OLD_STATE)

    def saved_and_exited() -> None:
        volume.progress = _training(14, ON_DEMAND)
        exited.set()

    clock = FakeClock({2.0: one_more_step, 10.0: saved_and_exited})
    published: list[TrainingProgress] = []
    run_loop(
        volume,
        published.append,
        stop,
        scan_interval_s=3,
        min_interval_s=15,
        clock=clock,
        trainer_exited=exited.is_set,
        shutdown_wait_s=1795,
        sleep=clock.sleep,
    )
    assert published == [_training(12, OLD_STATE), _training(14, ON_DEMAND)]
    assert clock.now == 10.0  # returned as soon as the trainer had exited, long before the bound


def test_final_publish_ignores_the_step_metrics_rate_limit() -> None:
    # The trainer exits 1 s after the last publish with only step metrics changed: still published.
    volume = ScriptedVolume(_training(12, OLD_STATE))
    exited = threading.Event()
    stop = threading.Event()
    stop.set()

    def last_step_and_exit() -> None:
        volume.progress = _training(16, OLD_STATE)
        exited.set()

    clock = FakeClock({1.0: last_step_and_exit})
    published: list[TrainingProgress] = []
    run_loop(
        volume,
        published.append,
        stop,
        scan_interval_s=3,
        min_interval_s=15,
        clock=clock,
        trainer_exited=exited.is_set,
        shutdown_wait_s=1795,
        sleep=clock.sleep,
    )
    assert [p.samples_seen for p in published] == [12, 16]


def test_a_trainer_that_never_exits_is_waited_for_only_until_the_bound() -> None:
    volume = ScriptedVolume(_training(12, OLD_STATE))
    stop = threading.Event()
    stop.set()

    def saved_late() -> None:
        volume.progress = _training(14, ON_DEMAND)

    clock = FakeClock({20.0: saved_late})
    published: list[TrainingProgress] = []
    run_loop(
        volume,
        published.append,
        stop,
        scan_interval_s=3,
        min_interval_s=15,
        clock=clock,
        trainer_exited=lambda: False,
        shutdown_wait_s=25,
        sleep=clock.sleep,
    )
    assert clock.now == 25.0  # the grace period (30 s) less the margin, not a second more
    assert published == [_training(12, OLD_STATE), _training(14, ON_DEMAND)]


def test_a_failing_final_publish_is_retried_a_few_times() -> None:
    volume = ScriptedVolume(_training(12, OLD_STATE))
    stop = threading.Event()
    stop.set()
    calls: list[TrainingProgress] = []

    def publish(progress: TrainingProgress) -> None:
        calls.append(progress)
        raise RuntimeError("apiserver hiccup")

    clock = FakeClock()
    run_loop(volume, publish, stop, clock=clock, sleep=clock.sleep)
    assert (len(calls), clock.now) == (3, 2.0)


def test_stop_signal_arriving_mid_run_starts_the_wait(tmp_path: Path) -> None:
    # The real marker file and the real env names: scanning goes on after the signal until the
    # launcher's marker appears.
    env = {contract.ENV_POD_STATE_DIR: str(tmp_path), contract.ENV_TERMINATION_GRACE_SECONDS: "30"}
    assert shutdown_wait_from_env(env) == 25.0
    assert shutdown_wait_from_env({}) == 25.0
    assert shutdown_wait_from_env({contract.ENV_TERMINATION_GRACE_SECONDS: "2"}) == 0.0
    exited = trainer_exited_check(env)
    assert trainer_exited_check({})() is True  # no pod-state volume: stop at once, as before
    assert exited() is True  # no trainer has started in the pod (e.g. its image cannot be pulled)
    (tmp_path / contract.TRAINER_RUNNING_FILE).write_text("7\n")  # the launcher's start

    volume = ScriptedVolume(_training(12, OLD_STATE))
    stop = threading.Event()
    clock = FakeClock()

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now == 3.0:
            volume.progress = _training(14, ON_DEMAND)
            (tmp_path / contract.TRAINER_EXITED_FILE).write_text("1\n")

    def wait(seconds: float) -> bool:  # the scan interval while running: the signal comes
        clock.sleep(seconds)
        stop.set()
        return True

    stop.wait = wait
    published: list[TrainingProgress] = []
    assert not exited()
    run_loop(
        volume,
        published.append,
        stop,
        scan_interval_s=1,
        min_interval_s=15,
        clock=clock,
        trainer_exited=exited,
        shutdown_wait_s=shutdown_wait_from_env(env),
        sleep=sleep,
    )
    assert [p.latest_full_state for p in published] == [OLD_STATE, ON_DEMAND]
    assert clock.now == 3.0
