"""Run data processing in a child process under a no-progress watchdog.

instructlab-training processes data with datasets' multiprocessing pools. About 1 run in 25 on a
loaded node, a pool's teardown (``to_json``) waited forever on a worker stuck on a lock: the pod
said ProcessingData 0% for as long as anyone watched. Processing is idempotent (it rewrites
data_output_dir), so the cure is to notice and start over:

- the work runs in a child (``python -m sft_trainer.data_child``) in its own session, so its
  process group holds it and every pool worker it forks;
- the child reports progress on a pipe whenever a progress bar moves (data_child);
- when nothing moved for ``stall_timeout`` seconds the launcher prints the stacks of the group
  (SIGQUIT, into the pod log), kills the whole group (SIGKILL) and starts again, at most
  ``attempts`` times; then it fails with what each attempt did;
- a child that dies without reporting (a signal: the OOM killer) is retried the same way; a
  child that reports an error (bad data) is not: the error is final;
- the launcher stays responsive: a SIGTERM (preemption) raises in its main thread here, and the
  child's group is killed on the way out.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .errors import ConfigError, TrainingFailed

log = logging.getLogger(__name__)

STACK_DUMP_WAIT = 2.0  # after SIGQUIT, before SIGKILL: time for the stacks to reach the log
EXIT_GRACE = 10.0  # a child that reported "done" but does not exit is killed after this
POLL_INTERVAL = 1.0
PROGRESS_DISABLING_ENV = ("HF_DATASETS_DISABLE_PROGRESS_BARS", "TQDM_DISABLE")


@dataclass
class Attempt:
    number: int
    pid: int = 0
    outcome: str = "running"  # done | stalled | died | error
    seconds: float = 0.0
    max_gap: float = 0.0  # longest time without progress (legitimate ones size the timeout)
    last_progress: str = ""  # the bar that moved last: where it stalled
    exit_code: int | None = None

    def describe(self) -> str:
        where = f" at {self.last_progress}" if self.last_progress else ""
        if self.outcome == "stalled":
            return f"attempt {self.number} stalled{where}"
        if self.outcome == "died":
            return f"attempt {self.number} died ({_exit_text(self.exit_code)}){where}"
        return f"attempt {self.number} {self.outcome}"


@dataclass
class Supervised:
    result: object
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def recovered_stalls(self) -> int:
        return sum(1 for attempt in self.attempts if attempt.outcome == "stalled")


class DataProcessingStalled(TrainingFailed):
    """Every attempt stalled or died: exit 1 (a restart may help)."""


def _exit_text(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _progress_text(event: dict) -> str:
    desc = (event.get("desc") or "a progress bar").strip().rstrip(":.")
    n, total = event.get("n"), event.get("total")
    if isinstance(n, int) and isinstance(total, int) and total:
        return f'"{desc}" {n}/{total}'
    return f'"{desc}"'


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class _Events:
    """Splits the pipe's bytes into JSON events."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[dict]:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        events = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except ValueError:
                log.warning("data processing child sent an unreadable line: %r", line[:200])
        return events


def run_attempt(
    number: int,
    request: dict,
    *,
    stall_timeout: float,
    env: Mapping[str, str],
    python: str,
    output=None,
    monotonic: Callable[[], float] = time.monotonic,
) -> tuple[Attempt, dict | None]:
    """One child, to its end. Returns the attempt and its final event (done or error), or None
    for a stall or a silent death. The child's process group is gone when this returns or
    raises."""
    attempt = Attempt(number=number)
    read_fd, write_fd = os.pipe()
    started = monotonic()
    try:
        process = subprocess.Popen(
            [python, "-m", "sft_trainer.data_child", json.dumps(request), str(write_fd)],
            pass_fds=(write_fd,),
            start_new_session=True,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
        )
    finally:
        os.close(write_fd)
    attempt.pid = process.pid
    log.info(
        "data processing attempt %d: pid %d (its own process group; killed after %.0fs without progress)",
        number,
        process.pid,
        stall_timeout,
    )
    final: dict | None = None
    events = _Events()
    last = started
    exited_at: float | None = None
    try:
        while True:
            now = monotonic()
            if process.poll() is not None and exited_at is None:
                exited_at = now
            if exited_at is not None:
                # Workers forked from the child still hold the pipe: kill the group, then drain.
                _kill_group(process.pid, signal.SIGKILL)
                if final is None:
                    for event in _drain(read_fd, events):
                        if event.get("event") in ("done", "error"):
                            final = event
                break
            if final is not None and now - last > EXIT_GRACE:
                log.warning(
                    "data processing child %d reported its end but did not exit in %.0fs; killing it",
                    process.pid,
                    EXIT_GRACE,
                )
                break
            if final is None and now - last >= stall_timeout:
                attempt.outcome = "stalled"
                log.error(
                    "data processing made no progress for %.0fs (last: %s): printing "
                    "its stacks and killing process group %d",
                    now - last,
                    attempt.last_progress or "nothing yet",
                    process.pid,
                )
                _kill_group(process.pid, signal.SIGQUIT)
                deadline = monotonic() + STACK_DUMP_WAIT
                while monotonic() < deadline and process.poll() is None:
                    time.sleep(0.1)
                break
            wait = min(POLL_INTERVAL, max(0.0, stall_timeout - (now - last)))
            ready, _, _ = select.select([read_fd], [], [], wait)
            if not ready:
                continue
            data = os.read(read_fd, 65536)
            if not data:  # every writer is gone: the child exited
                try:
                    process.wait(timeout=EXIT_GRACE)
                except subprocess.TimeoutExpired:
                    break
                continue
            for event in events.feed(data):
                moment = monotonic()
                attempt.max_gap = max(attempt.max_gap, moment - last)
                last = moment
                kind = event.get("event")
                if kind == "progress":
                    attempt.last_progress = _progress_text(event)
                elif kind in ("done", "error"):
                    final = event
    finally:
        _kill_group(process.pid, signal.SIGKILL)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log.error("data processing child %d did not die after SIGKILL", process.pid)
        os.close(read_fd)
    attempt.seconds = monotonic() - started
    attempt.exit_code = process.returncode
    if attempt.outcome != "stalled":
        if final is None:
            attempt.outcome = "died"
        else:
            attempt.outcome = "done" if final.get("event") == "done" else "error"
    return attempt, final


def _drain(fd: int, events: _Events) -> list[dict]:
    found: list[dict] = []
    while True:
        ready, _, _ = select.select([fd], [], [], 5.0)
        if not ready:
            return found
        data = os.read(fd, 65536)
        if not data:
            return found
        found.extend(events.feed(data))


def run_supervised(
    target: str,
    payload: dict,
    *,
    stall_timeout: float,
    attempts: int,
    env: Mapping[str, str] | None = None,
    python: str = sys.executable,
    output=None,
) -> Supervised:
    """``target(payload)`` (``module:function``, returning JSON) in a watched child; retried
    after a stall or a silent death; its ConfigError / LauncherError re-raised here.
    ``output``: the child's stdout and stderr (a file; default: the launcher's, the pod log)."""
    request = {"target": target, "payload": payload}
    env = dict(os.environ if env is None else env)
    for name in PROGRESS_DISABLING_ENV:  # a disabled bar reports nothing: it would look stalled
        env.pop(name, None)
    history: list[Attempt] = []
    for number in range(1, attempts + 1):
        attempt, final = run_attempt(
            number, request, stall_timeout=stall_timeout, env=env, python=python, output=output
        )
        history.append(attempt)
        log.info(
            "data processing attempt %d/%d (pid %d): %s in %.1fs, longest gap without progress %.1fs",
            number,
            attempts,
            attempt.pid,
            attempt.outcome,
            attempt.seconds,
            attempt.max_gap,
        )
        if final is not None and attempt.outcome == "done":  # done and error: a final event
            return Supervised(result=final.get("result"), attempts=history)
        if final is not None and attempt.outcome == "error":
            if final.get("kind") == "config":
                raise ConfigError(
                    final.get("field") or "trainingArgs.data_path", final.get("problem") or "data processing failed"
                )
            raise TrainingFailed(final.get("message") or "data processing failed")
        log.warning("data processing %s; %s", attempt.describe(), "retrying" if number < attempts else "giving up")
    raise DataProcessingStalled(
        f"data processing did not finish in {attempts} attempts ("
        + "; ".join(a.describe() for a in history)
        + f"; a stall is {stall_timeout:.0f}s without progress)"
    )
