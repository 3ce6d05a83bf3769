"""The launcher's SIGTERM handler must not leak into forked children: datasets' process pools
(data processing, num_proc > 1) stop their workers with SIGTERM and join them, so a worker that
raised Preempted instead of dying could hang data processing forever."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import multiprocessing as mp, os, signal, time
from sft_trainer import launcher
launcher._handler_pid = os.getpid()
signal.signal(signal.SIGTERM, launcher._raise_preempted)

def work(x):
    time.sleep(0.2)
    return x

for _ in range(10):
    with mp.get_context("fork").Pool(8) as pool:  # __exit__ terminates busy workers
        pool.map_async(work, range(64))
        time.sleep(0.05)
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
except launcher.Preempted:
    print("launcher preempted")
"""


def test_pool_workers_die_by_sigterm_and_the_launcher_is_preempted() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard; the run takes seconds
        env={"PYTHONPATH": f"{REPO / 'trainer-image'}:{REPO / 'operator'}", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "launcher preempted", result.stderr[-2000:]
    assert "Preempted" not in result.stderr  # no worker raised it


STUCK_SCRIPT = r"""
import sys, time
from sft_trainer import launcher
launcher.dump_stacks_on_sigquit()

def stuck_in_data_processing():
    print("ready", flush=True)
    time.sleep(60)

stuck_in_data_processing()
"""


def test_sigquit_prints_where_the_launcher_is_and_it_goes_on() -> None:
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-c", STUCK_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": f"{REPO / 'trainer-image'}:{REPO / 'operator'}", "PATH": "/usr/bin:/bin"},
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGQUIT)
        time.sleep(0.5)
        assert proc.poll() is None, "SIGQUIT must not stop the launcher"
    finally:
        proc.kill()
        _, stderr = proc.communicate(timeout=10)
    assert "stuck_in_data_processing" in stderr, stderr[-2000:]


def test_a_stop_that_reached_run_training_as_it_ended_is_seen_once_and_cleared(monkeypatch) -> None:
    from pathlib import Path

    from sft_trainer.launcher import stop_requested_during_training

    trigger = Path("/dev/shm") / f"sft-test-trigger-{os.getpid()}"
    monkeypatch.setenv("CHECKPOINT_TRIGGER_FILENAME", trigger.name)
    assert stop_requested_during_training() is False
    trigger.write_text("1")  # what run_training's handler writes on SIGTERM
    try:
        assert stop_requested_during_training() is True
        assert not trigger.exists()
        assert stop_requested_during_training() is False
    finally:
        trigger.unlink(missing_ok=True)
