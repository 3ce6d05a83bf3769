"""One source's directory in the source cache: lock, verified files, partial files, COMPLETE.json.

    <cache>/<key>/files/...        the files as the trainer reads them (moved in once verified)
    <cache>/<key>/partial/...      downloads in progress (kept across a kill: resumed by Range)
    <cache>/<key>/PARTIAL.json     which version of each file a partial file is the start of
    <cache>/<key>/VERIFIED.json    {path: {"size", "checksum"}}: files checked, never fetched again
    <cache>/<key>/COMPLETE.json    SourceManifest, written last
    <cache>/<key>.lock             flock: one fetch of a source at a time, across jobs

Verification is pure over a file's bytes: size always, then the source's checksum where it has
one ("sha256:", "git-sha1:", "md5:"); an "etag:" (an opaque ETag) is checked by the source
itself for stability, not here.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from sft_core import checkpoints, sources
from sft_core.sources import SourceFile, SourceManifest

from .state import now_iso

VERIFIED_FILE = "VERIFIED.json"
PARTIAL_DIR = "partial"
# {path: "<size>:<checksum>"}: which version of each file its partial file holds the start of.
PARTIAL_TAGS_FILE = "PARTIAL.json"


@dataclass(frozen=True)
class RemoteFile:
    path: str  # relative to files/
    size: int
    checksum: str | None  # "sha256:<hex>", "git-sha1:<hex>", "md5:<hex>", "etag:<value>"
    ref: str = ""  # what the source needs to download it (a key, a filename in the repo)


@dataclass(frozen=True)
class Remote:
    revision: str | None
    files: tuple[RemoteFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def digest_file(path: Path, algorithm: str) -> str:
    if algorithm == "git-sha1":
        digest = hashlib.sha1(f"blob {Path(path).stat().st_size}\0".encode())
    else:
        digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, expected: RemoteFile) -> str | None:
    """None when the file matches, else what is wrong (for the one line)."""
    size = Path(path).stat().st_size
    if size != expected.size:
        return f"{expected.path}: {size} bytes, the source says {expected.size}"
    if expected.checksum:
        algorithm, _, value = expected.checksum.partition(":")
        if algorithm in ("sha256", "git-sha1", "md5"):
            actual = digest_file(path, algorithm)
            if actual != value.lower():
                return f"{expected.path}: {algorithm} {actual}, the source says {value}"
    return None


class Entry:
    def __init__(self, cache_root: Path, key: str):
        self.dir = Path(cache_root) / key
        self.files = self.dir / sources.SOURCE_FILES_DIR
        self.partial = self.dir / PARTIAL_DIR
        self.manifest_path = self.dir / sources.SOURCE_MANIFEST_FILE
        self.verified_path = self.dir / VERIFIED_FILE
        self.lock_path = Path(cache_root) / f"{key}.lock"
        self._lock_fd: int | None = None

    # --- the lock ------------------------------------------------------------------------------
    def try_lock(self) -> bool:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._lock_fd = fd
        return True

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- records -------------------------------------------------------------------------------
    def manifest(self) -> SourceManifest | None:
        try:
            return SourceManifest.model_validate_json(self.manifest_path.read_bytes())
        except (OSError, ValueError):
            return None

    def verified(self) -> dict[str, dict]:
        try:
            data = json.loads(self.verified_path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def is_verified(self, record: dict[str, dict], f: RemoteFile) -> bool:
        """Checked before and still in place: never fetched again."""
        seen = record.get(f.path)
        final = self.files / f.path
        return seen == {"size": f.size, "checksum": f.checksum} and final.is_file() and final.stat().st_size == f.size

    def mark_verified(self, record: dict[str, dict], f: RemoteFile) -> None:
        record[f.path] = {"size": f.size, "checksum": f.checksum}
        checkpoints.atomic_write_bytes(self.verified_path, json.dumps(record, indent=0, sort_keys=True).encode())

    def partial_path(self, f: RemoteFile) -> Path:
        """Where ``f`` is downloaded; a partial file kept from another version of the file (the
        remote changed between a kill and the restart) is started over: appending the rest of
        the new version to the start of the old one gives a file of the right size that only a
        content hash would catch, and https/S3 ETags often are none."""
        path = self.partial / f.path
        path.parent.mkdir(parents=True, exist_ok=True)
        tags = self._partial_tags()
        want = f"{f.size}:{f.checksum}"
        if tags.get(f.path) != want:
            path.unlink(missing_ok=True)
            tags[f.path] = want
            checkpoints.atomic_write_bytes(self.dir / PARTIAL_TAGS_FILE, json.dumps(tags, sort_keys=True).encode())
        return path

    def _partial_tags(self) -> dict[str, str]:
        try:
            data = json.loads((self.dir / PARTIAL_TAGS_FILE).read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def install(self, partial: Path, f: RemoteFile) -> None:
        final = self.files / f.path
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, final)  # a reader with the old file open keeps reading the old one

    def invalidate(self) -> None:
        """The source moved (another revision): no COMPLETE.json until it is fetched again."""
        self.manifest_path.unlink(missing_ok=True)

    def remove_stale(self, remote: Remote) -> list[str]:
        """Files of an older revision that the new one no longer has (only under files/)."""
        wanted = {f.path for f in remote.files}
        removed = []
        if self.files.is_dir():
            for path in sorted(self.files.rglob("*")):
                rel = path.relative_to(self.files).as_posix()
                if path.is_file() and rel not in wanted:
                    path.unlink()
                    removed.append(rel)
        return removed

    def complete(self, uri: str, remote: Remote) -> SourceManifest:
        manifest = SourceManifest(
            uri=uri,
            revision=remote.revision,
            completed_at=now_iso(),
            files=[SourceFile(path=f.path, size=f.size, checksum=f.checksum) for f in remote.files],
        )
        shutil.rmtree(self.partial, ignore_errors=True)
        (self.dir / PARTIAL_TAGS_FILE).unlink(missing_ok=True)
        checkpoints.atomic_write_bytes(
            self.manifest_path, manifest.model_dump_json(by_alias=True, indent=1).encode() + b"\n"
        )
        return manifest

    def bytes_missing(self, remote: Remote, record: dict[str, dict]) -> int:
        missing = 0
        for f in remote.files:
            if not self.is_verified(record, f):
                partial = self.partial / f.path
                missing += max(f.size - (partial.stat().st_size if partial.is_file() else 0), 0)
        return missing


def free_bytes(path: Path) -> int:
    path = Path(path)
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free
