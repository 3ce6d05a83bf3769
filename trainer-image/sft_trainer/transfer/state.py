"""TRANSFERS.json: the sidecar's report (sources.TransferState), written atomically.

One writer (pod 0's sidecar). Progress writes are at most every PROGRESS_INTERVAL seconds;
state changes are written at once; ``updatedAt`` is refreshed by every write, and a heartbeat
thread writes at least every HEARTBEAT_SECONDS while the launcher waits on us (fetch, restore),
so a waiting rank can tell a slow download from a dead sidecar.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from sft_core import checkpoints, sources
from sft_core.sources import DownloadProgress, DownloadState, ExportRecord, TransferState

log = logging.getLogger("sft_trainer.transfer")

PROGRESS_INTERVAL = 2.0
HEARTBEAT_SECONDS = 5.0


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def read(path: Path) -> TransferState | None:
    try:
        return TransferState.model_validate_json(Path(path).read_bytes())
    except (OSError, ValueError):
        return None


class StateWriter:
    def __init__(self, ckpt_dir: Path, clock=time.monotonic):
        self.path = Path(ckpt_dir) / sources.TRANSFER_STATE_FILE
        self._clock = clock
        self._lock = threading.RLock()
        previous = read(self.path)
        # Exports survive a restart (they are what was uploaded); downloads are redone each start.
        self.downloads: list[dict] = []
        self.exports: list[dict] = [e.model_dump(by_alias=True) for e in previous.exports] if previous else []
        self.export_error: str | None = None
        self.export_attempts = 0
        self._last_write = float("-inf")
        self._heartbeat: threading.Thread | None = None
        self._stop_heartbeat = threading.Event()
        # Called before each heartbeat write (the fetcher measures partial files there).
        self.before_heartbeat: Callable[..., None] | None = None

    # --- downloads ---------------------------------------------------------------------------
    def add_download(self, field: str, uri: str) -> int:
        with self._lock:
            self.downloads.append({"field": field, "source": uri, "state": DownloadState.PENDING.value})
            return len(self.downloads) - 1

    def update_download(self, index: int, *, force: bool = True, **values) -> None:
        with self._lock:
            entry = self.downloads[index]
            for key, value in values.items():
                if value is None:
                    entry.pop(key, None)
                else:
                    entry[key] = value.value if isinstance(value, DownloadState) else value
            self.write(force=force)

    # --- exports -----------------------------------------------------------------------------
    def exported(self) -> set[str]:
        with self._lock:
            return {e["checkpoint"] for e in self.exports}

    def add_export(self, checkpoint: str, uri: str, size: int) -> None:
        with self._lock:
            self.exports = [e for e in self.exports if e["checkpoint"] != checkpoint]
            self.exports.append({"checkpoint": checkpoint, "uri": uri, "bytes": size, "exportedAt": now_iso()})
            self.exports = self.exports[-1000:]
            self.export_error, self.export_attempts = None, 0
            self.write()

    def export_failed(self, message: str) -> None:
        with self._lock:
            self.export_error = message
            self.export_attempts += 1
            self.write()

    # --- writing -----------------------------------------------------------------------------
    def snapshot(self) -> TransferState:
        with self._lock:
            return TransferState(
                downloads=[DownloadProgress.model_validate(d) for d in self.downloads],
                exports=[ExportRecord.model_validate(e) for e in self.exports],
                exportError=self.export_error,
                exportAttempts=self.export_attempts,
                updatedAt=now_iso(),
            )

    def write(self, *, force: bool = True) -> None:
        with self._lock:
            if not force and self._clock() - self._last_write < PROGRESS_INTERVAL:
                return
            data = self.snapshot().model_dump(by_alias=True, exclude_none=True, mode="json")
            try:
                checkpoints.atomic_write_bytes(self.path, json.dumps(data, indent=1).encode() + b"\n")
            except OSError as error:  # the report is not worth failing a download for
                log.warning("cannot write %s: %s", self.path, error)
            self._last_write = self._clock()

    def start_heartbeat(self) -> None:
        if self._heartbeat is not None:
            return
        self._stop_heartbeat.clear()

        def beat() -> None:
            while not self._stop_heartbeat.wait(min(PROGRESS_INTERVAL, HEARTBEAT_SECONDS)):
                try:
                    if self.before_heartbeat is not None:
                        self.before_heartbeat()
                    self.write(force=False)
                except Exception:  # a report glitch must not end the heartbeat
                    log.exception("heartbeat write failed")

        self._heartbeat = threading.Thread(target=beat, name="transfer-heartbeat", daemon=True)
        self._heartbeat.start()

    def stop_heartbeat(self) -> None:
        self._stop_heartbeat.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
        self._heartbeat = None
