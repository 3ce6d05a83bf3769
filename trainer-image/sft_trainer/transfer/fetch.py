"""Fetch each source once into the cache: cached check, lock, resume, verify, COMPLETE.json last."""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Mapping
from pathlib import Path

from sft_operator.sources import DownloadState, SourceKind, SourceManifest

from . import outcome
from .cache import Entry, Remote, free_bytes, verify
from .config import SourceEntry, TransferConfig
from .outcome import Permanent, Transient, TransferFailure
from .s3 import Changed
from .state import StateWriter

log = logging.getLogger("sft_trainer.transfer")

VERIFY_TRIES = 2  # a file that fails verification twice is a permanent failure
LOCK_POLL_SECONDS = 2.0


class FetchFailed(Exception):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def make_source(entry: SourceEntry, env: Mapping[str, str]):
    kind = entry.source.kind
    if kind in (SourceKind.HF_MODEL, SourceKind.HF_DATASET_FILE):
        from .hf import HfSource

        return HfSource(entry, env)
    if kind in (SourceKind.S3_PREFIX, SourceKind.S3_OBJECT):
        from .s3 import S3Source

        return S3Source(entry, env)
    from .https import HttpsSource

    return HttpsSource(entry, env)


def as_failure(error: BaseException, source) -> TransferFailure | None:
    if isinstance(error, TransferFailure):
        return error
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return Permanent("no space left on the source cache's volume")
    if isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return Permanent(f"cannot write the source cache: {error.strerror}: {error.filename}")
    return source.classify(error)


class Fetcher:
    def __init__(self, config: TransferConfig, state: StateWriter, env: Mapping[str, str],
                 stop: threading.Event):
        self.config = config
        self.state = state
        self.env = env
        self.stop = stop
        self._progress_lock = threading.Lock()
        self._current: tuple[int, int, Path] | None = None  # (state index, bytes before, partial)

    def run(self, indices: list[int]) -> list[SourceManifest]:
        self.state.before_heartbeat = self._measure
        return [self.fetch_one(index, entry) for index, entry in zip(indices, self.config.sources)]

    def _measure(self) -> None:
        """Bytes done of the file being downloaded: its partial file's size (every ~2 s)."""
        with self._progress_lock:
            current = self._current
        if current is None:
            return
        index, before, partial = current
        try:
            size = partial.stat().st_size
        except OSError:
            size = 0
        self.state.update_download(index, force=False, bytesDone=before + size)

    def fetch_one(self, index: int, entry: SourceEntry) -> SourceManifest:
        source = make_source(entry, self.env)
        cache = Entry(self.config.cache_root, entry.cache_key)
        attempt = 0
        while True:
            attempt += 1
            self._progressed = False
            try:
                return self._attempt(index, entry, source, cache)
            except Exception as error:
                failure = as_failure(error, source)
                if failure is None:
                    raise
                text = outcome.line(entry.field, entry.uri, failure.problem)
                if isinstance(failure, Permanent):
                    self.state.update_download(index, state=DownloadState.FAILED, error=text)
                    raise FetchFailed(text, failure.exit_code) from None
                if self._progressed:
                    attempt = 1  # bytes came in: a slow, flaky link is not a dead one
                if attempt >= outcome.MAX_ATTEMPTS:
                    text = f"{text} ({attempt} attempts)"
                    self.state.update_download(index, error=text)
                    raise FetchFailed(text, Transient.exit_code) from None
                delay = outcome.backoff_seconds(attempt)
                self.state.update_download(index, error=outcome.retry_note(text, attempt, delay))
                log.warning("%s", outcome.retry_note(text, attempt, delay))
                self.stop.wait(delay)
            finally:
                with self._progress_lock:
                    self._current = None

    def _cached(self, index: int, entry: SourceEntry, source, cache: Entry) -> SourceManifest | None:
        manifest = cache.manifest()
        if manifest is None or manifest.uri != entry.uri:
            return None
        if source.needs_check(manifest.revision) and source.revision() != manifest.revision:
            log.info("%s: %s moved from %s; fetching again", entry.field, entry.uri, manifest.revision)
            return None
        self.state.update_download(index, state=DownloadState.DONE, cached=True, bytesDone=manifest.total_bytes,
                                   bytesTotal=manifest.total_bytes, files=len(manifest.files),
                                   revision=manifest.revision, error=None)
        log.info("%s: %s is in the cache (%d files, %d bytes): nothing to fetch", entry.field, entry.uri,
                 len(manifest.files), manifest.total_bytes)
        return manifest

    def _lock(self, index: int, entry: SourceEntry, cache: Entry) -> None:
        said = False
        while not cache.try_lock():
            if not said:
                log.info("%s: another fetch of %s holds %s; waiting", entry.field, entry.uri, cache.lock_path)
                said = True
            if self.stop.wait(LOCK_POLL_SECONDS):
                raise Transient("stopped while waiting for another job's fetch")

    def _attempt(self, index: int, entry: SourceEntry, source, cache: Entry) -> SourceManifest:
        if (manifest := self._cached(index, entry, source, cache)) is not None:
            return manifest
        self._lock(index, entry, cache)
        try:
            # Another job may have completed it while we waited for the lock.
            if (manifest := self._cached(index, entry, source, cache)) is not None:
                return manifest
            remote = source.resolve()
            return self._download(index, entry, source, cache, remote)
        finally:
            cache.unlock()

    def _download(self, index: int, entry: SourceEntry, source, cache: Entry, remote: Remote) -> SourceManifest:
        if cache.manifest() is not None:
            cache.invalidate()
        record = cache.verified()
        missing = cache.bytes_missing(remote, record)
        free = free_bytes(cache.dir)
        if missing > free:
            raise Permanent(f"no space left: {missing} bytes to fetch, {free} free under {self.config.cache_root}")
        done = sum(f.size for f in remote.files if cache.is_verified(record, f))
        self.state.update_download(index, state=DownloadState.DOWNLOADING, bytesDone=done,
                                   bytesTotal=remote.total_bytes, files=len(remote.files), revision=remote.revision,
                                   cached=False)
        log.info("%s: fetching %s (%d files, %d bytes, %d already here)", entry.field, entry.uri,
                 len(remote.files), remote.total_bytes, done)
        for f in remote.files:
            if cache.is_verified(record, f):
                continue
            for attempt in range(1, VERIFY_TRIES + 1):
                partial = cache.partial_path(f)
                with self._progress_lock:
                    self._current = (index, done, partial)
                before = partial.stat().st_size if partial.exists() else 0
                try:
                    source.download(f, partial, remote.revision)
                    problem = verify(partial, getattr(source, "expected", lambda same: same)(f))
                except Changed as changed:
                    problem = str(changed)
                except BaseException:
                    # Cut short (a failure to retry, SIGTERM): the bytes kept, into the report now.
                    kept = partial.stat().st_size if partial.exists() else 0
                    self.state.update_download(index, bytesDone=done + kept)
                    raise
                finally:
                    if partial.exists() and partial.stat().st_size > before:
                        self._progressed = True
                if problem is None:
                    cache.install(partial, f)
                    cache.mark_verified(record, f)
                    break
                partial.unlink(missing_ok=True)
                log.warning("%s: %s (download %d of %d)", entry.field, problem, attempt, VERIFY_TRIES)
                if attempt == VERIFY_TRIES:
                    raise Permanent(f"verification failed twice: {problem}")
            with self._progress_lock:
                self._current = None
            done += f.size
            self.state.update_download(index, force=False, bytesDone=done)
        for stale in cache.remove_stale(remote):
            log.info("%s: removed %s (not in %s)", entry.field, stale, remote.revision)
        manifest = cache.complete(entry.uri, remote)
        self.state.update_download(index, state=DownloadState.DONE, bytesDone=remote.total_bytes, error=None)
        log.info("%s: %s complete (%d bytes)", entry.field, entry.uri, remote.total_bytes)
        return manifest
