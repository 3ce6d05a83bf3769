"""Processing functions for the data watchdog's tests, run by sft_trainer.data_child in the
watched child (importable there through PYTHONPATH). ``payload["state"]`` is a directory where
each call counts its attempt, so a function can misbehave on the first attempt only."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path


def _attempt(payload: dict) -> int:
    state = Path(payload["state"])
    state.mkdir(parents=True, exist_ok=True)
    number = len(list(state.glob("attempt-*"))) + 1
    (state / f"attempt-{number}").write_text(str(os.getpid()))
    return number


_LOCK = None  # created before the pool forks, so the workers inherit it


def _blocked_worker(pid_file: str) -> None:
    Path(pid_file).write_text(str(os.getpid()))
    _LOCK.acquire()  # held by the parent forever: the worker never returns


def _finish(payload: dict, number: int) -> dict:
    Path(payload["state"], "output").write_text(f"written by attempt {number}")
    return {"attempt": number}


def deadlock_first_attempt(payload: dict) -> dict:
    """The issue's hang: the main thread joins a pool whose worker waits on a lock forever."""
    number = _attempt(payload)
    if number == 1:
        global _LOCK
        context = multiprocessing.get_context("fork")
        _LOCK = context.Lock()
        _LOCK.acquire()
        with context.Pool(2) as pool:
            pool.apply(_blocked_worker, (str(Path(payload["state"], "worker.pid")),))
    return _finish(payload, number)


def hang_forever(payload: dict) -> dict:
    _attempt(payload)
    while True:
        time.sleep(60)


def slow_but_moving(payload: dict) -> dict:
    """Progress every 0.3 s for longer than the stall timeout, then done."""
    from tqdm import tqdm

    number = _attempt(payload)
    for _ in tqdm(range(payload["steps"]), desc="Tokenizing", mininterval=0):
        time.sleep(0.3)
    return _finish(payload, number)


def moves_then_hangs(payload: dict) -> dict:
    from tqdm import tqdm

    _attempt(payload)
    bar = tqdm(total=10, desc="Converting samples", mininterval=0)
    for _ in range(3):
        bar.update(1)
        time.sleep(0.1)
    while True:
        time.sleep(60)


def killed_first_attempt(payload: dict) -> dict:
    number = _attempt(payload)
    if number == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return _finish(payload, number)


def bad_data(payload: dict) -> dict:
    from sft_trainer.errors import ConfigError

    _attempt(payload)
    raise ConfigError("trainingArgs.data_path", '/data/x.jsonl line 3: no "messages" field')


def bug(payload: dict) -> dict:
    _attempt(payload)
    raise ValueError("boom")
