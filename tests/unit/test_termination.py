"""The launcher's termination message: one short printable line, written where the pod spec's
terminationMessagePath says (SFT_TERMINATION_LOG in tests), never failing the exit; a training
failure says which exception, where, from the worker's log."""

from __future__ import annotations

import logging
from pathlib import Path

from sft_trainer import termination

TQDM_TAIL = (
    "Map (num_proc=2):  50%|\u2588\u2588\u2588\u2588\u2588     | 12/24 [00:00<00:00, "
    "49.99 examples/s]\rMap (num_proc=2): 100%|\u2588\u2588\u2588\u2588\u2588\u2588"
    "\u2588\u2588\u2588\u2588| 24/24\n\x1b[33mdone\x1b[0m\n"
)


def test_one_line_strips_ansi_carriage_returns_and_newlines() -> None:
    assert termination.one_line("a\r\nb\tc \x1b[31mred\x1b[0m\n\n") == "a b c red"


def test_one_line_caps_bytes_on_a_character_boundary() -> None:
    line = termination.one_line("\u2588" * 1000)  # 3 bytes each
    assert len(line.encode()) <= termination.MAX_BYTES
    assert line.endswith("...")
    assert set(line[:-3]) == {"\u2588"}


def test_write_replaces_the_file_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    path.write_text("old message\n")
    assert termination.write("trainingArgs.data_path: x\nmore", path) == "trainingArgs.data_path: x more"
    assert path.read_text() == "trainingArgs.data_path: x more\n"


def test_an_unwritable_path_is_logged_and_the_exit_goes_on(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    termination.write("message", tmp_path / "missing-dir" / "termination-log")
    assert "cannot write the termination message" in caplog.text


def test_path_from_env() -> None:
    assert termination.path_from_env({}) == Path("/dev/termination-log")
    assert termination.path_from_env({"SFT_TERMINATION_LOG": "/tmp/t"}) == Path("/tmp/t")


def test_describe_crash_says_type_message_file_and_line() -> None:
    def broken() -> None:
        raise KeyError("messages")

    try:
        broken()
    except KeyError as error:
        text = termination.describe_crash(error)
    line = broken.__code__.co_firstlineno + 1
    assert text == f"launcher crashed: KeyError: 'messages' (test_termination.py:{line})"


WORKER_LOG = (
    TQDM_TAIL
    + """\
[rank0]: Traceback (most recent call last):
[rank0]:   File "/opt/venv/lib/python3.11/site-packages/instructlab/training/main_ds.py", line 1214, in <module>
[rank0]:     main(args)
[rank0]:   File "/opt/venv/lib/python3.11/site-packages/instructlab/training/model.py", line 470, in forward
[rank0]:     raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
[rank0]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB
E1129 12:00:01.000000 1 torch/distributed/elastic/multiprocessing/api.py:882] failed (exitcode: 1)
Traceback (most recent call last):
  File "/opt/venv/bin/torchrun", line 8, in <module>
    sys.exit(main())
  File "/opt/venv/lib/python3.11/site-packages/torch/distributed/run.py", line 143, in launch_agent
    raise ChildFailedError(
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
main_ds.py FAILED
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-29_12:00:01
  host      : job-0
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 42)
  error_file: <N/A>
============================================================
"""
)


def test_worker_failure_is_the_workers_exception_not_torchruns_wrapper() -> None:
    assert termination.worker_failure(WORKER_LOG) == (
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (model.py:470)"
    )


def test_worker_failure_killed_by_a_signal() -> None:
    log = (
        TQDM_TAIL
        + """\
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
Root Cause (first observed failure):
[0]:
  time      : 2026-11-29_12:00:01
  rank      : 1 (local_rank: 0)
  exitcode  : -9 (pid: 42)
"""
    )
    assert termination.worker_failure(log) == "rank 1 was killed by SIGKILL (the out-of-memory killer?)"


def test_worker_failure_unknown() -> None:
    assert termination.worker_failure(TQDM_TAIL) is None
    assert termination.worker_failure("") is None


def test_read_tail(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"x" * 100 + b"end")
    assert termination.read_tail(path, limit=5) == "x" * 2 + "end"
    assert termination.read_tail(tmp_path / "missing") == ""
