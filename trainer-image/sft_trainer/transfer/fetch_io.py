"""Stopping a download between two chunks (shared by the sources and the fetcher)."""

from __future__ import annotations

import threading


class Aborted(Exception):
    """Another file of the source failed (or SIGTERM): this download stops at its next chunk."""


class AbortableFile:
    """The file a download writes to; its next write raises once ``abort`` is set."""

    def __init__(self, raw, abort: threading.Event):
        self._raw = raw
        self._abort = abort

    def write(self, data) -> int:
        if self._abort.is_set():
            raise Aborted()
        return self._raw.write(data)

    def __getattr__(self, name):
        return getattr(self._raw, name)
