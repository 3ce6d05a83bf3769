"""The data-processing child: ``python -m sft_trainer.data_child <request-json> <progress-fd>``.

Started by data_watchdog in its own session (process group), so that the launcher can kill it
and every pool worker it forked at once. It runs ``request["target"]`` (``module:function``)
on ``request["payload"]`` and reports on the progress pipe, one JSON object per line:

    {"event": "started", "pid": 123}
    {"event": "progress", "desc": "Converting samples...", "n": 400, "total": 1000}
    {"event": "done", "result": ...}
    {"event": "error", "kind": "config", "field": "trainingArgs.data_path", "problem": "..."}
    {"event": "error", "kind": "failed", "message": "..."}

"progress" is sent whenever a module is imported (start-up), a tqdm progress bar (datasets' map/filter/to_json bars, tokenizer
loading, ...) is created or closes, and when it advances, at most every PROGRESS_INTERVAL
seconds: real work
moving, unlike a heartbeat thread, which would go on beating while the pool is deadlocked.
After reporting, the child leaves with ``os._exit``: no interpreter teardown (atexit pool joins)
that could hang after the work is done.
"""

from __future__ import annotations

import faulthandler
import importlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from .errors import ConfigError, LauncherError
from .termination import describe_crash

PROGRESS_INTERVAL = 0.5
EXIT_DONE, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


class Channel:
    """JSON lines on the progress pipe; writes are serialized (datasets may update bars from
    threads) and a write error (the launcher is gone) is ignored.

    Progress is rate-limited; an update held back is sent by a flusher thread within
    PROGRESS_INTERVAL, so the launcher knows where a stalled run stopped. The flusher sends
    only updates that happened: it is no heartbeat."""

    def __init__(self, fd: int):
        self.fd: int | None = fd
        self.lock = threading.Lock()
        self.last_sent = 0.0
        self.last_desc: str | None = None
        self.pending: dict | None = None
        threading.Thread(target=self._flush_pending, name="progress-flush", daemon=True).start()
        # Pool workers forked from here must never send: a fork while another thread held the
        # lock would leave it held in the worker forever (the very hang this guards against).
        os.register_at_fork(after_in_child=self._silence)

    def _silence(self) -> None:
        self.fd = None
        self.lock = threading.Lock()

    def send(self, **event) -> None:
        if self.fd is None:
            return
        data = (json.dumps(event, default=str) + "\n").encode()
        with self.lock:
            try:
                os.write(self.fd, data)
            except OSError:
                pass

    def progress(self, bar, *, force: bool = False) -> None:
        self.progress_event(
            str(getattr(bar, "desc", "") or ""), getattr(bar, "n", None), getattr(bar, "total", None), force=force
        )

    def progress_event(
        self, desc: str, n: int | None, total: int | None, *, force: bool = False, key: str | None = None
    ) -> None:
        """``key``: updates with the same key within PROGRESS_INTERVAL are rate-limited (a
        bar's description, by default)."""
        now = time.monotonic()
        key = desc if key is None else key
        event = {"event": "progress", "desc": desc, "n": n, "total": total}
        if not force and key == self.last_desc and now - self.last_sent < PROGRESS_INTERVAL:
            self.pending = event
            return
        self.pending = None
        self.last_sent, self.last_desc = now, key
        self.send(**event)

    def _flush_pending(self) -> None:
        while True:
            time.sleep(PROGRESS_INTERVAL)
            event, self.pending = self.pending, None
            if event is not None:
                self.last_sent = time.monotonic()
                self.send(**event)


def install_progress_hook(channel: Channel) -> None:
    """Every tqdm bar (any subclass: datasets', transformers') reports to the channel."""
    import tqdm
    import tqdm.std

    # tqdm's monitor thread takes tqdm's locks every few seconds; a fork (datasets' pool) while
    # it holds one leaves the workers with that lock held forever. Bars still draw.
    tqdm.tqdm.monitor_interval = 0
    cls = tqdm.std.tqdm
    original_init, original_update, original_close = cls.__init__, cls.update, cls.close

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        channel.progress(self, force=True)

    def update(self, n=1):
        result = original_update(self, n)
        channel.progress(self)
        return result

    def close(self):
        if not getattr(self, "_sft_reported_close", False):  # close() runs twice (__del__)
            self._sft_reported_close = True
            channel.progress(self, force=True)
        return original_close(self)

    cls.__init__, cls.update, cls.close = __init__, update, close


class _ImportProgress:
    """A meta-path finder that finds nothing and reports each import as progress: importing
    torch, transformers and datasets takes 10-60 s on a loaded node, without a progress bar.
    An import that hangs stops reporting like anything else."""

    def __init__(self, channel: Channel):
        self.channel = channel

    def find_spec(self, name, path=None, target=None):  # noqa: ARG002 - the finder protocol
        self.channel.progress_event(f"importing {name.partition('.')[0]}", None, None, key="import")
        return None


def install_import_progress(channel: Channel) -> None:
    sys.meta_path.insert(0, _ImportProgress(channel))


def resolve(target: str) -> Callable[[dict], object]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def run(request: dict, channel: Channel) -> int:
    channel.send(event="started", pid=os.getpid())
    try:
        install_import_progress(channel)
        install_progress_hook(channel)
        result = resolve(request["target"])(request.get("payload") or {})
    except ConfigError as error:
        channel.send(event="error", kind="config", field=error.field, problem=error.message[len(error.field) + 2 :])
        return EXIT_CONFIG
    except LauncherError as error:
        channel.send(event="error", kind="failed", message=error.message)
        return EXIT_FAILED
    except Exception as error:  # noqa: BLE001 - reported to the launcher, which decides
        channel.send(event="error", kind="failed", message=describe_crash(error))
        import traceback

        traceback.print_exc()
        return EXIT_FAILED
    channel.send(event="done", result=result)
    return EXIT_DONE


def main(argv: list[str]) -> None:
    request, fd = json.loads(argv[0]), int(argv[1])
    # `kill -QUIT` prints every thread's stack, here and in the pool workers forked from here
    # (the watchdog does so before it kills a stalled attempt).
    faulthandler.register(signal.SIGQUIT, all_threads=True)
    code = run(request, Channel(fd))
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
