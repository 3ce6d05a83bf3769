"""The trainer-exited marker in the pod-state emptyDir, shared with the reporter sidecar.

When a pod is deleted (suspend, preemption, drain) both containers get SIGTERM at once; the
trainer then writes its on-demand checkpoint, which the reporter must still publish. So the
launcher removes ``contract.TRAINER_EXITED_FILE`` and writes ``contract.TRAINER_RUNNING_FILE``
when it starts, and writes the exit marker as its very last act (atexit: after the termination message, on every exit path that runs Python's shutdown);
pod 0's reporter, told to stop, keeps publishing until the file appears (bounded by the grace
period). Without ``SFT_POD_STATE_DIR`` (older pod templates, the training tests' harness) this
does nothing.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from sft_core import contract

log = logging.getLogger("sft_trainer")


def marker_path(env: Mapping[str, str]) -> Path | None:
    directory = env.get(contract.ENV_POD_STATE_DIR)
    return Path(directory) / contract.TRAINER_EXITED_FILE if directory else None


def write_marker(path: Path, pid: int) -> None:
    if os.getpid() != pid:  # a forked child (data workers) exiting is not the trainer exiting
        return
    try:
        path.write_text(f"{pid}\n")
    except OSError as error:
        log.warning("cannot write %s (the reporter waits for its grace period instead): %s", path, error)


def trainer_started(env: Mapping[str, str]) -> Path | None:
    """Remove a previous container's exit marker, say a trainer runs (so the reporter waits for
    it), and arrange for this process to write the exit marker on exit."""
    path = marker_path(env)
    if path is None:
        return None
    try:
        path.unlink(missing_ok=True)
        (path.parent / contract.TRAINER_RUNNING_FILE).write_text(f"{os.getpid()}\n")
    except OSError as error:
        log.warning("cannot update the pod-state markers in %s: %s", path.parent, error)
    atexit.register(write_marker, path, os.getpid())
    return path
