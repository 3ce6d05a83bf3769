"""Many real data-processing runs (instructlab-training's, in the launcher's watched child) under
CPU load, some with a pool worker made to hang: the stress test and the benchmark share this.

A hang is injected the way the issue saw it: one of datasets' pool workers stops (SIGSTOP: it
holds whatever it holds, forever) while a pool is in use, so the pool's map or its teardown
waits for it. The watchdog must notice (no progress bar moves), kill the process group and
process again; every run must end with the same complete output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sft_trainer import data_once, data_watchdog

BURNER = "import time\nwhile True:\n    pass\n"


def _ppid_and_cmdline(pid: int) -> tuple[int, str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1]), cmdline


def pool_workers() -> list[int]:
    """Processes forked by a data_child of this process: datasets' pool workers."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _ppid_and_cmdline(int(entry))
            if info:
                table[int(entry)] = info
    children = {pid for pid, (ppid, cmd) in table.items() if ppid == os.getpid() and "sft_trainer.data_child" in cmd}
    return sorted(pid for pid, (ppid, _) in table.items() if ppid in children)


class Injector(threading.Thread):
    """When armed, stops one pool worker (once) as soon as one exists."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.armed = threading.Event()
        self.done = threading.Event()
        self.stopped_pid: int | None = None
        self.finish = threading.Event()

    def arm(self) -> None:
        self.stopped_pid = None
        self.done.clear()
        self.armed.set()

    def run(self) -> None:
        while not self.finish.is_set():
            if not self.armed.wait(0.2):
                continue
            workers = pool_workers()
            if workers:
                try:
                    os.kill(workers[-1], signal.SIGSTOP)
                    self.stopped_pid = workers[-1]
                except ProcessLookupError:
                    continue
                self.armed.clear()
                self.done.set()
            time.sleep(0.02)


@dataclass
class Run:
    number: int
    injected: bool
    seconds: float
    attempts: list[data_watchdog.Attempt]
    samples: int


@dataclass
class StressResult:
    runs: list[Run] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def injected(self) -> int:
        return sum(run.injected for run in self.runs)

    @property
    def recovered(self) -> int:
        """Stalled attempts the watchdog killed in runs that then finished."""
        return sum(sum(a.outcome == "stalled" for a in run.attempts) for run in self.runs)

    @property
    def unexpected_stalls(self) -> int:
        """Stalls in runs where nothing was injected: real hangs, or a timeout too short."""
        return sum(sum(a.outcome == "stalled" for a in run.attempts) for run in self.runs if not run.injected)

    @property
    def max_gap(self) -> float:
        """Longest time without progress in an attempt that finished: what the timeout must
        stay above."""
        return max((a.max_gap for run in self.runs for a in run.attempts if a.outcome == "done"), default=0.0)

    def summary(self) -> str:
        return (
            f"{len(self.runs)} runs in {self.seconds:.0f}s, {self.injected} with a stuck "
            f"pool worker, {self.recovered} stalled attempts killed and retried "
            f"({self.unexpected_stalls} not injected), longest gap without progress in a "
            f"finished attempt {self.max_gap:.1f}s"
        )


def count_lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


def stress(
    model_dir: Path,
    data_path: Path,
    work: Path,
    *,
    runs: int,
    inject_every: int,
    stall_timeout: float,
    burners: int,
    num_cpu_procs: int = 2,
    log=print,
) -> StressResult:
    """``runs`` real processing runs, one after the other, with ``burners`` busy processes
    alongside; every ``inject_every``-th run (0: none) gets a stuck pool worker."""
    env = dict(
        os.environ,
        HF_DATASETS_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HOME=str(work / "hf"),
    )
    burning = [subprocess.Popen([sys.executable, "-c", BURNER]) for _ in range(burners)]
    injector = Injector()
    injector.start()
    result = StressResult()
    started = time.monotonic()
    try:
        for number in range(1, runs + 1):
            out = work / f"run-{number}"
            payload = {
                "data_path": str(data_path),
                "data_output_dir": str(out),
                "model_path": str(model_dir),
                "max_seq_len": 512,
                "chat_tmpl_path": None,
                "num_cpu_procs": num_cpu_procs,
                "document_column_name": None,
            }
            inject = bool(inject_every) and number % inject_every == 0
            if inject:
                injector.arm()
            begin = time.monotonic()
            with open(work / f"run-{number}.log", "wb") as output:  # the library's chatter
                supervised = data_watchdog.run_supervised(
                    data_once.PROCESS_TARGET, payload, stall_timeout=stall_timeout, attempts=3, env=env, output=output
                )
            injected = inject and injector.stopped_pid is not None
            injector.armed.clear()
            run = Run(
                number=number,
                injected=injected,
                seconds=time.monotonic() - begin,
                attempts=supervised.attempts,
                samples=count_lines(out / "data.jsonl"),
            )
            result.runs.append(run)
            log(
                f"run {number}: {run.samples} samples in {run.seconds:.1f}s, attempts "
                f"{[a.outcome for a in run.attempts]}"
                + (f" (stopped pool worker {injector.stopped_pid})" if injected else "")
            )
    finally:
        injector.finish.set()
        for process in burning:
            process.kill()
            process.wait()
        result.seconds = time.monotonic() - started
    return result
