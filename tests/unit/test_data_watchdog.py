"""The data-processing watchdog: a child that stops making progress is killed with its whole
process group and retried; errors are final; the launcher's SIGTERM still works meanwhile.

Real processes, fake processing functions (tests/unit/data_watchdog_targets.py): each test runs
in seconds with a stall timeout of about 2 s."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sft_trainer import data_watchdog
from sft_trainer.errors import ConfigError, TrainingFailed

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
TARGETS = "data_watchdog_targets"
STALL = 3.0


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(Path(__file__).parent), str(REPO / "trainer-image"), str(REPO / "operator")]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    return env


def supervise(name: str, state: Path, *, stall: float = STALL, attempts: int = 3, **payload):
    return data_watchdog.run_supervised(
        f"{TARGETS}:{name}", {"state": str(state), **payload}, stall_timeout=stall, attempts=attempts, env=child_env()
    )


def gone(pid: int, timeout: float = 5.0) -> bool:
    """The process no longer exists, or is a zombie waiting for init to reap it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def test_a_deadlocked_pool_is_killed_and_processing_retried(tmp_path: Path) -> None:
    started = time.monotonic()
    supervised = supervise("deadlock_first_attempt", tmp_path)
    assert supervised.result == {"attempt": 2}
    assert [a.outcome for a in supervised.attempts] == ["stalled", "done"]
    assert (tmp_path / "output").read_text() == "written by attempt 2"
    assert supervised.recovered_stalls == 1
    # the stuck pool worker (a grandchild) died with its group, and so did the first child
    assert gone(int((tmp_path / "worker.pid").read_text()))
    assert gone(supervised.attempts[0].pid)
    assert time.monotonic() - started < STALL + data_watchdog.STACK_DUMP_WAIT + 20


def test_progress_keeps_a_long_run_alive(tmp_path: Path) -> None:
    # 16 steps of 0.3 s: 4.8 s in all, longer than the 3 s stall timeout, never 3 s idle
    supervised = supervise("slow_but_moving", tmp_path, steps=16)
    assert [a.outcome for a in supervised.attempts] == ["done"]
    assert supervised.attempts[0].max_gap < STALL


def test_every_attempt_stalls_then_a_clear_failure(tmp_path: Path) -> None:
    with pytest.raises(TrainingFailed) as failure:
        supervise("moves_then_hangs", tmp_path, attempts=2)
    assert isinstance(failure.value, data_watchdog.DataProcessingStalled)
    assert failure.value.message == (
        'data processing did not finish in 2 attempts (attempt 1 stalled at "Converting '
        'samples" 3/10; attempt 2 stalled at "Converting samples" 3/10; a stall is 3s without '
        "progress)"
    )
    assert len(list(tmp_path.glob("attempt-*"))) == 2


def test_a_child_killed_by_a_signal_is_retried(tmp_path: Path) -> None:
    supervised = supervise("killed_first_attempt", tmp_path)
    assert [a.outcome for a in supervised.attempts] == ["died", "done"]
    assert supervised.attempts[0].describe().startswith("attempt 1 died (killed by SIGKILL)")


def test_bad_data_is_final_and_keeps_its_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        supervise("bad_data", tmp_path)
    assert error.value.message == 'trainingArgs.data_path: /data/x.jsonl line 3: no "messages" field'
    assert len(list(tmp_path.glob("attempt-*"))) == 1


def test_an_unexpected_error_is_final_and_says_where(tmp_path: Path) -> None:
    import data_watchdog_targets

    with pytest.raises(TrainingFailed) as error:
        supervise("bug", tmp_path)
    source = Path(data_watchdog_targets.__file__).read_text().splitlines()
    line = source.index('    raise ValueError("boom")') + 1
    assert error.value.message == f"launcher crashed: ValueError: boom (data_watchdog_targets.py:{line})"
    assert len(list(tmp_path.glob("attempt-*"))) == 1


LAUNCHER_LIKE = r"""
import logging, os, signal, sys
from sft_trainer import data_watchdog, launcher
logging.basicConfig(level=logging.INFO)
launcher._handler_pid = os.getpid()
signal.signal(signal.SIGTERM, launcher._raise_preempted)
try:
    data_watchdog.run_supervised("data_watchdog_targets:hang_forever", {"state": sys.argv[1]},
                                 stall_timeout=600, attempts=1)
except launcher.Preempted as error:
    print("preempted:", error.message, flush=True)
    sys.exit(3)
"""


def test_sigterm_while_the_child_runs_kills_it_and_exits_preempted(tmp_path: Path) -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER_LIKE, str(tmp_path)],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "attempt-1").exists():
            assert time.monotonic() < deadline and launcher.poll() is None, launcher.stderr.read()
            time.sleep(0.1)
        child = int((tmp_path / "attempt-1").read_text())
        sent = time.monotonic()
        launcher.send_signal(signal.SIGTERM)
        out, err = launcher.communicate(timeout=20)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            # A failed run must not leave its hanging child behind (SIGKILL cannot be passed on).
            if (tmp_path / "attempt-1").exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int((tmp_path / "attempt-1").read_text()), signal.SIGKILL)
    assert launcher.returncode == 3, err[-2000:]
    assert out.startswith("preempted: received SIGTERM before training ran"), out
    assert time.monotonic() - sent < 10
    assert gone(child)
