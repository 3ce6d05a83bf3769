"""Container processes of the dev local node: start, signal, reap, read what they left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .localnode_plan import ContainerPlan

ENTER_SCRIPT = Path(__file__).with_name("localnode_enter.py")


class ContainerProcess:
    """One run of one container: a process group led by the container's main process.

    The main process is started through ``localnode_enter.py``, which execs the command in
    place, so ``pid`` is the command's own PID.
    """

    def __init__(self, plan: ContainerPlan, run_dir: Path, log_file: Path, termination_log: Path,
                 on_exit: Callable[["ContainerProcess", int], None]):
        self.plan = plan
        self.log_file = log_file
        self.termination_log = termination_log
        run_dir.mkdir(parents=True, exist_ok=True)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        termination_log.parent.mkdir(parents=True, exist_ok=True)
        termination_log.write_bytes(b"")
        plan_file = run_dir / f"{plan.name}.plan.json"
        plan_file.write_text(json.dumps({**plan.to_json(), "nodePid": os.getpid()}, indent=1))
        with open(log_file, "ab") as log:
            # Where this run's output starts: FallbackToLogsOnError reads this run's lines only.
            self.log_offset = log.tell()
            self.started_at = datetime.now(timezone.utc)
            self.popen = subprocess.Popen(
                [sys.executable, "-I", str(ENTER_SCRIPT), str(plan_file)],
                env=plan.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=str(run_dir), start_new_session=True, close_fds=True,
            )
        self.pid = self.popen.pid
        self.returncode: int | None = None
        self._on_exit = on_exit
        threading.Thread(target=self._wait, name=f"wait-{plan.name}-{self.pid}", daemon=True).start()

    def _wait(self) -> None:
        returncode = self.popen.wait()
        # When the main process ends the container ends: no orphans outlive it (as in a pod).
        self.kill_group()
        self.returncode = returncode
        self._on_exit(self, returncode)

    @property
    def alive(self) -> bool:
        return self.returncode is None

    def terminate(self) -> None:
        """SIGTERM to the main process only: the command relays it to its children itself."""
        _signal_pid(self.pid, signal.SIGTERM)

    def kill_group(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def wait(self, timeout: float | None = None) -> int:
        return self.popen.wait(timeout)

    def termination_file_text(self) -> str:
        try:
            return self.termination_log.read_bytes()[-4096:].decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail_bytes(self, limit: int = 64 * 1024) -> str:
        try:
            with open(self.log_file, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                start = max(self.log_offset, size - limit)
                f.seek(start)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""


def _signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
