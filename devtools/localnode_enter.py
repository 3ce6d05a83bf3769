"""Runs inside a new container process of the dev local node, before the container's command.

Executed by path (``python -I localnode_enter.py PLAN.json``), so it imports only the standard
library. It gives the process its own mount and UTS namespaces, bind-mounts the pod's local
volume directories onto the container's mountPaths, sets the pod's hostname, changes into the
working directory and execs the command: the container's main process keeps this PID, so the
local node's SIGTERM reaches the command itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
START_ERROR_EXIT_CODE = 128  # localnode_plan.START_ERROR_EXIT_CODE (not imported: stdlib only here)

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class StartError(RuntimeError):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise StartError(f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, flags: int) -> None:
    _check(
        _libc.mount(source.encode() if source else None, target.encode(), None, flags, None),
        f"mount {source or ''} -> {target}",
    )


def enter_namespaces(hostname: str) -> None:
    if _libc.unshare(CLONE_NEWNS | CLONE_NEWUTS) != 0:
        errno = ctypes.get_errno()
        raise StartError(
            f"unshare(CLONE_NEWNS|CLONE_NEWUTS) failed: {os.strerror(errno)}; the local node needs root "
            "(CAP_SYS_ADMIN) and mount namespaces"
        )
    # Our bind mounts must not propagate back to the host's mount table.
    _mount(None, "/", MS_REC | MS_PRIVATE)
    name = hostname.encode()
    _check(_libc.sethostname(name, len(name)), f"sethostname {hostname}")


def open_source(source: str) -> str:
    """Pins a mount source before any mount: a later mount (say an emptyDir at /tmp) may hide
    the host path it lives under. Returns a path that keeps naming the pinned file."""
    try:
        fd = os.open(source, os.O_PATH)
    except FileNotFoundError:
        raise StartError(f"volume path {source} does not exist") from None
    return f"/proc/self/fd/{fd}"


def bind(source: str, target: str, read_only: bool) -> None:
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    elif not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()  # an empty mountpoint file
    _mount(source, target, MS_BIND | MS_REC)
    if read_only:
        _mount(None, target, MS_REMOUNT | MS_BIND | MS_RDONLY)


def die_with_the_node(node_pid: int) -> None:
    """If the local node dies without stopping us (SIGKILL, crash), the kernel kills this
    main process; a clean stop() never relies on it."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != node_pid:  # the node died before prctl took effect
        sys.exit(START_ERROR_EXIT_CODE)


def main(plan_path: str) -> None:
    with open(plan_path) as f:
        plan = json.load(f)
    die_with_the_node(int(plan["nodePid"]))
    try:
        enter_namespaces(plan["hostname"])
        pinned = [open_source(mount["source"]) for mount in plan["mounts"]]
        for mount, source in zip(plan["mounts"], pinned):
            bind(source, mount["target"], mount["readOnly"])
        for source in pinned:
            os.close(int(source.rsplit("/", 1)[1]))
        os.makedirs(plan["workingDir"], exist_ok=True)
        os.chdir(plan["workingDir"])
    except (StartError, OSError) as exc:
        print(f"localnode: cannot start container: {exc}", file=sys.stderr, flush=True)
        sys.exit(START_ERROR_EXIT_CODE)
    argv = plan["argv"]
    try:
        os.execvpe(argv[0], argv, os.environ)
    except OSError as exc:
        print(f"localnode: cannot run {argv[0]!r}: {exc} (PATH={os.environ.get('PATH', '')})",
              file=sys.stderr, flush=True)
        sys.exit(START_ERROR_EXIT_CODE)


if __name__ == "__main__":
    main(sys.argv[1])
