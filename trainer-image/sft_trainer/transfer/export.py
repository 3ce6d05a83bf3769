"""Export complete checkpoints to s3://bucket/prefix, and restore the newest exported full state.

Remote layout (sources.export_uri_of): ``<prefix>/hf_format/<name>/...`` and
``<prefix>/full_state/<name>/...``, each with EXPORT_COMPLETE_OBJECT written after every other
file: a prefix without it is an upload cut short. A file whose remote size already matches is
not uploaded again (restart-safe). Nothing remote or local is ever deleted.

What counts as exportable (``exportable``, pure): an hf_format checkpoint that checkpoints.py
calls complete (config and weights present), with every shard its index names present, and no
file modified for QUIET_SECONDS (the weights may still be being written under their final
name); ``last_epoch`` only after training completed (it is rewritten every epoch); with
``fullStates``, full states that are ``stable`` (complete and saved at an epoch end: an
on-demand mid-epoch save is rewritten in place later).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from sft_core import checkpoints, sources
from sft_core.checkpoints import CheckpointTree

from . import outcome
from .config import ExportConfig
from .state import StateWriter, now_iso

log = logging.getLogger("sft_trainer.transfer")

QUIET_SECONDS = 15.0
SCAN_SECONDS = 5.0
EXPORT_BACKOFF_MAX = 300.0
PART_SIZE = 64 << 20
RESTORE_STAGING = f"{checkpoints.OPERATOR_DIR}/restore"
# User metadata on each exported file: the local mtime it was uploaded from. Size alone cannot
# tell this checkpoint's file from another run's of the same name (same model: same sizes).
MTIME_META = "sft-mtime-ns"


class Stopping(BaseException):
    """SIGTERM while uploading: abandon the file (redone next time)."""


def newest_mtime(path: Path) -> float:
    newest = path.stat().st_mtime
    for item in path.rglob("*"):
        try:
            newest = max(newest, item.stat().st_mtime)
        except OSError:
            pass
    return newest


def shards_present(path: Path) -> bool:
    """Every weight file an index (sharded checkpoint) names is there."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.exists():
            try:
                names = set(json.loads(index.read_text()).get("weight_map", {}).values())
            except (OSError, ValueError):
                return False
            if not all((path / name).exists() for name in names):
                return False
    return True


def exportable(
    tree: CheckpointTree,
    exported: set[str],
    *,
    full_states: bool,
    now: float,
    newest: Callable[[str], float],
    ready: Callable[[str], bool],
) -> list[str]:
    """Checkpoints (relative paths) to export now, oldest first (pure given the two probes)."""
    wanted = []
    for ckpt in tree.hf_checkpoints:
        rel = f"{checkpoints.HF_FORMAT_DIR}/{ckpt.name}"
        if not ckpt.complete or rel in exported:
            continue
        if ckpt.name == checkpoints.HF_LAST_EPOCH_NAME and tree.completion is None:
            continue
        if now - newest(rel) >= QUIET_SECONDS and ready(rel):
            wanted.append(rel)
    if full_states:
        for state in tree.full_states:
            rel = f"{checkpoints.FULL_STATE_DIR}/{state.name}"
            if state.stable and rel not in exported and now - newest(rel) >= QUIET_SECONDS:
                wanted.append(rel)
    return wanted


def local_files(path: Path) -> list[dict]:
    """A checkpoint's files as the marker lists them: path, size, mtime (ns)."""
    files = []
    for item in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        stat = item.stat()
        files.append({"path": item.relative_to(path).as_posix(), "size": stat.st_size, "mtimeNs": stat.st_mtime_ns})
    return files


def remote_key(prefix: str, *parts: str) -> str:
    return "/".join(p.strip("/") for p in (prefix, *parts) if p.strip("/"))


class _StopAwareReader(io.RawIOBase):
    """A file the upload reads from; SIGTERM (the stop event) ends the upload mid-file."""

    def __init__(self, path: Path, stop: threading.Event):
        self._file = open(path, "rb")
        self._stop = stop

    def read(self, size: int = -1) -> bytes:
        if self._stop.is_set():
            raise Stopping()
        return self._file.read(size)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._file.close()
        super().close()


class Exporter:
    def __init__(
        self,
        export: ExportConfig,
        root: Path,
        state: StateWriter,
        env: Mapping[str, str],
        stop: threading.Event,
        client=None,
    ):
        from .s3 import make_client

        self.export = export
        self.root = Path(root)
        self.state = state
        self.env = env
        self.stop = stop
        self.client = client or make_client(env)

    # --- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        """Until SIGTERM: scan, upload what is exportable, wait; failures back off and retry."""
        while not self.stop.is_set():
            try:
                self.export_pending()
                wait = SCAN_SECONDS
            except Stopping:
                return
            except Exception as error:
                failure = self._classify(error)
                if failure is None:
                    log.exception("export failed")
                    problem = f"{type(error).__name__}: {error}"
                else:
                    problem = failure.problem
                self.state.export_failed(outcome.line("spec.export.uri", self.export.uri, problem))
                wait = min(outcome.backoff_seconds(self.state.export_attempts), EXPORT_BACKOFF_MAX)
                log.warning("export: %s (attempt %d; retrying in %gs)", problem, self.state.export_attempts, wait)
            self.stop.wait(wait)

    def _classify(self, error: BaseException):
        from .s3 import classify

        return classify(error, self.env, f"write {self.export.uri}", bucket=self.export.bucket)

    def export_pending(self) -> list[str]:
        tree = checkpoints.scan_checkpoints(self.root)
        todo = exportable(
            tree,
            self.state.exported(),
            full_states=self.export.full_states,
            now=time.time(),
            newest=lambda rel: newest_mtime(self.root / rel),
            ready=lambda rel: shards_present(self.root / rel),
        )
        for rel in todo:
            if self.stop.is_set():
                raise Stopping()
            self.upload_checkpoint(rel)
        return todo

    # --- one checkpoint ------------------------------------------------------------------------
    def upload_checkpoint(self, rel: str) -> str:
        uri = sources.export_uri_of(self.export.uri, rel)
        base = remote_key(self.export.prefix, rel)
        local = self.root / rel
        files = local_files(local)
        total = sum(f["size"] for f in files)
        marker_key = f"{base}/{sources.EXPORT_COMPLETE_OBJECT}"
        if self._remote_files(marker_key) == files:
            # This very checkpoint is there (TRANSFERS.json was lost, not the upload). Another
            # run's checkpoint of the same name (a reused prefix) has other mtimes: replaced.
            log.info("export: %s is already at %s", rel, uri)
            self.state.add_export(rel, uri, total)
            return uri
        uploaded = 0
        for f in files:
            key = f"{base}/{f['path']}"
            if self._remote_version(key) == (f["size"], str(f["mtimeNs"])):
                continue  # uploaded by an earlier attempt that was cut before the marker
            reader = _StopAwareReader(local / f["path"], self.stop)
            try:
                self.client.put_object(
                    self.export.bucket,
                    key,
                    reader,
                    f["size"],
                    part_size=PART_SIZE,
                    num_parallel_uploads=1,
                    metadata={MTIME_META: str(f["mtimeNs"])},
                )
            finally:
                reader.close()
            uploaded += f["size"]
        marker = {"checkpoint": rel, "exportedAt": now_iso(), "files": files}
        data = json.dumps(marker, indent=1).encode()
        self.client.put_object(
            self.export.bucket, marker_key, io.BytesIO(data), len(data), content_type="application/json"
        )
        self.state.add_export(rel, uri, total)
        log.info("export: %s -> %s (%d bytes uploaded, %d in all)", rel, uri, uploaded, total)
        return uri

    def _stat(self, key: str):
        from minio.error import S3Error

        try:
            return self.client.stat_object(self.export.bucket, key)
        except S3Error as error:
            if error.code in ("NoSuchKey", "ResourceNotFound", "NoSuchObject"):
                return None
            raise

    def _remote_size(self, key: str) -> int | None:
        stat = self._stat(key)
        return None if stat is None else stat.size

    def _remote_version(self, key: str) -> tuple[int, str | None] | None:
        """(size, the local mtime it was uploaded from) of an exported file, or None."""
        stat = self._stat(key)
        if stat is None:
            return None
        meta = {k.lower(): v for k, v in (stat.metadata or {}).items()}
        return stat.size, meta.get(f"x-amz-meta-{MTIME_META}")

    def _remote_files(self, marker_key: str) -> list[dict] | None:
        if self._stat(marker_key) is None:
            return None
        try:
            return json.loads(self._get(marker_key)).get("files")
        except (ValueError, AttributeError):
            return None

    # --- restore -------------------------------------------------------------------------------
    def remote_full_states(self) -> list[tuple[int, str]]:
        """(epoch, name) of the full states exported completely, oldest first."""
        prefix = remote_key(self.export.prefix, checkpoints.FULL_STATE_DIR) + "/"
        found = []
        for obj in self.client.list_objects(self.export.bucket, prefix=prefix, recursive=False):
            name = obj.object_name[len(prefix) :].strip("/")
            match = re.fullmatch(r"epoch_(\d+)", name)
            if (
                obj.is_dir
                and match
                and self._remote_size(f"{prefix}{name}/{sources.EXPORT_COMPLETE_OBJECT}") is not None
            ):
                found.append((int(match.group(1)), name))
        return sorted(found)

    def restore(self) -> str | None:
        """Download the newest complete exported full state when the directory has none; then
        write RESTORE_DONE_FILE. Returns what was restored."""
        done = self.root / sources.RESTORE_DONE_FILE
        if done.exists():
            return None
        tree = checkpoints.scan_checkpoints(self.root)
        restored = None
        if not any(state.complete for state in tree.full_states):
            remote = self.remote_full_states()
            if remote:
                restored = self._download_full_state(remote[-1][1])
        else:
            log.info("restore: %s has a complete full state; nothing to restore", self.root)
        record = {"restored": restored, "from": self.export.uri, "at": now_iso()}
        checkpoints.atomic_write_bytes(done, json.dumps(record).encode() + b"\n")
        return restored

    def _download_full_state(self, name: str) -> str:
        rel = f"{checkpoints.FULL_STATE_DIR}/{name}"
        base = remote_key(self.export.prefix, rel)
        marker = json.loads(self._get(f"{base}/{sources.EXPORT_COMPLETE_OBJECT}"))
        staging = self.root / RESTORE_STAGING / name
        for entry in marker["files"]:
            target = staging / entry["path"]
            if target.is_file() and target.stat().st_size == entry["size"]:
                continue  # a restore cut short: this file came over already
            target.parent.mkdir(parents=True, exist_ok=True)
            response = self.client.get_object(self.export.bucket, f"{base}/{entry['path']}")
            try:
                with open(target, "wb") as out:
                    for chunk in response.stream(1 << 20):
                        if self.stop.is_set():
                            raise Stopping()
                        out.write(chunk)
            finally:
                response.close()
                response.release_conn()
            if target.stat().st_size != entry["size"]:
                raise outcome.Transient(
                    f"{rel}/{entry['path']}: {target.stat().st_size} bytes, exported {entry['size']}"
                )
        destination = self.root / rel
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, destination)
        log.info("restore: %s from %s", rel, sources.export_uri_of(self.export.uri, rel))
        return rel

    def _get(self, key: str) -> bytes:
        response = self.client.get_object(self.export.bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()
