"""The termination message: one concise line, written once when the launcher exits.

Kubernetes puts the content of the container's ``terminationMessagePath`` (default
``/dev/termination-log``) into ``status.containerStatuses[].state.terminated.message``; with
``terminationMessagePolicy: FallbackToLogsOnError`` it uses the log tail only when that file is
empty and the container failed. So a launcher that says nothing leaves users tqdm fragments cut
mid-line; one that writes its message leaves the cause, with the field, file and line. A crash
that cannot write (SIGKILL, OOM) still falls back to the log tail.

The message is for people and for the operator's conditions (``status.py`` prefixes it with the
pod and exit code): one line, no ANSI escapes or carriage returns, at most MAX_BYTES.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import traceback
from pathlib import Path

from sft_core import contract

log = logging.getLogger(__name__)

DEFAULT_PATH = "/dev/termination-log"
# The kubelet keeps 4096 bytes; the operator adds a prefix, Events keep 1024.
MAX_BYTES = 512

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")
_SPACES = re.compile(r"\s+")


def path_from_env(env: dict | os._Environ) -> Path:
    return Path(env.get(contract.ENV_TERMINATION_LOG) or DEFAULT_PATH)


def one_line(text: str, limit: int = MAX_BYTES) -> str:
    """Printable single line of at most ``limit`` UTF-8 bytes (cut on a character boundary)."""
    text = _ANSI.sub("", text)
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    text = _SPACES.sub(" ", text).strip()
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore").rstrip() + "..."


def write(message: str, path: Path) -> str:
    """Write the message (replacing anything there); a failure is logged, never raised."""
    line = one_line(message)
    try:
        Path(path).write_text(line + "\n")
    except OSError as error:
        log.warning("cannot write the termination message to %s: %s", path, error)
    return line


# --- Describing what happened ----------------------------------------------------------------


def where(error: BaseException) -> str:
    """``file.py:line`` of the innermost frame of an exception's traceback."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return ""
    frame = frames[-1]
    return f"{Path(frame.filename).name}:{frame.lineno}"


def describe_crash(error: BaseException) -> str:
    """An unexpected exception in the launcher itself (a bug): type, message, file and line."""
    detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = f"launcher crashed: {type(error).__name__}"
    if detail:
        text += f": {detail}"
    location = where(error)
    return f"{text} ({location})" if location else text


# A Python exception line as a traceback ends: "torch.OutOfMemoryError: CUDA out of memory..."
_EXCEPTION_LINE = re.compile(
    r"^(?:\[rank\d+\]:\s*)?(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit|Warning)"
    r"\w*)(?::\s*(?P<text>.*))?$"
)
_FRAME_LINE = re.compile(r'^\s*(?:\[rank\d+\]:\s*)?File "(?P<file>[^"]+)", line (?P<line>\d+)')
_ROOT_CAUSE = re.compile(r"exitcode\s*:\s*(?P<code>-?\d+)")
_ROOT_RANK = re.compile(r"\brank\s*:\s*(?P<rank>\d+)")
# torchrun's own summary: it names the failed worker, not what failed.
_WRAPPERS = ("ChildFailedError", "SignalException")


def worker_failure(log_text: str) -> str | None:
    """What a training worker died of, from the end of its log (``full_logs_global<R>.log``).

    The last Python exception that is not torchrun's wrapper, with the file and line it was
    raised at; else torchrun's root-cause exit code (a negative code is a signal: SIGKILL is
    usually the out-of-memory killer). None when the log says neither."""
    lines = _ANSI.sub("", log_text).replace("\r", "\n").splitlines()
    for index in range(len(lines) - 1, -1, -1):
        match = _EXCEPTION_LINE.match(lines[index].strip())
        if not match or match.group("type").rsplit(".", 1)[-1] in _WRAPPERS:
            continue
        if match.group("type").endswith("Warning"):
            continue
        text = f"{match.group('type')}"
        if match.group("text"):
            text += f": {match.group('text').strip()}"
        for before in range(index - 1, max(-1, index - 200), -1):
            frame = _FRAME_LINE.match(lines[before])
            if frame:
                text += f" ({Path(frame.group('file')).name}:{frame.group('line')})"
                break
        return text
    tail = "\n".join(lines[-80:])
    code = _ROOT_CAUSE.search(tail)
    if code is None:
        return None
    rank = _ROOT_RANK.search(tail)
    who = f"rank {rank.group('rank')}" if rank else "a worker"
    value = int(code.group("code"))
    if value < 0:
        try:
            name = signal.Signals(-value).name
        except ValueError:
            name = f"signal {-value}"
        hint = " (the out-of-memory killer?)" if -value == signal.SIGKILL else ""
        return f"{who} was killed by {name}{hint}"
    return f"{who} exited with code {value}"


def read_tail(path: Path, limit: int = 64 * 1024) -> str:
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - limit))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""
