"""Fetch each source once into the cache: cached check, lock, resume, verify, COMPLETE.json last."""

from __future__ import annotations

import errno
import logging
import queue
import threading
from collections.abc import Mapping
from pathlib import Path

from sft_core.sources import DownloadState, SourceKind, SourceManifest

from . import outcome
from .cache import Entry, Remote, free_bytes, verify
from .config import SourceEntry, TransferConfig
from .fetch_io import Aborted
from .outcome import Permanent, TransferFailure, Transient
from .s3 import Changed
from .state import StateWriter

log = logging.getLogger("sft_trainer.transfer")

VERIFY_TRIES = 2  # a file that fails verification twice is a permanent failure
LOCK_POLL_SECONDS = 2.0
# Files of one source fetched at once (a sharded model): one stream from a hub's CDN or an S3
# endpoint is often far below the link's capacity. huggingface_hub's snapshot_download uses 8.
WORKERS = 4


class _Progress:
    """One source's progress while its files download: verified bytes, partial files in flight."""

    def __init__(self, index: int, done: int):
        self.index = index
        self.done = done
        self.partials: set[Path] = set()
        self.lock = threading.Lock()

    def measure(self) -> int:
        with self.lock:
            done, partials = self.done, list(self.partials)
        for partial in partials:
            try:
                done += partial.stat().st_size
            except OSError:
                pass
        return done


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
    def __init__(self, config: TransferConfig, state: StateWriter, env: Mapping[str, str], stop: threading.Event):
        self.config = config
        self.state = state
        self.env = env
        self.stop = stop
        self._progress: _Progress | None = None  # the source being fetched

    def run(self, indices: list[int]) -> list[SourceManifest]:
        self.state.before_heartbeat = self._measure
        return [self.fetch_one(index, entry) for index, entry in zip(indices, self.config.sources)]

    def _measure(self, *, force: bool = False) -> None:
        """Bytes done of the source: its verified files, plus the size of each partial file
        being downloaded (every ~2 s from the heartbeat; at once when a download is cut)."""
        progress = self._progress
        if progress is not None:
            self.state.update_download(progress.index, force=force, bytesDone=progress.measure())

    def fetch_one(self, index: int, entry: SourceEntry) -> SourceManifest:
        source = make_source(entry, self.env)
        cache = Entry(self.config.source_cache_root, entry.cache_key)
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
                self._progress = None

    def _cached(self, index: int, entry: SourceEntry, source, cache: Entry) -> SourceManifest | None:
        manifest = cache.manifest()
        if manifest is None or manifest.uri != entry.uri:
            return None
        if source.needs_check(manifest.revision) and source.revision() != manifest.revision:
            log.info("%s: %s moved from %s; fetching again", entry.field, entry.uri, manifest.revision)
            return None
        self.state.update_download(
            index,
            state=DownloadState.DONE,
            cached=True,
            bytesDone=manifest.total_bytes,
            bytesTotal=manifest.total_bytes,
            files=len(manifest.files),
            revision=manifest.revision,
            error=None,
        )
        log.info(
            "%s: %s is in the cache (%d files, %d bytes): nothing to fetch",
            entry.field,
            entry.uri,
            len(manifest.files),
            manifest.total_bytes,
        )
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
        self.state.update_download(
            index,
            state=DownloadState.DOWNLOADING,
            bytesDone=done,
            bytesTotal=remote.total_bytes,
            files=len(remote.files),
            revision=remote.revision,
            cached=False,
        )
        log.info(
            "%s: fetching %s (%d files, %d bytes, %d already here)",
            entry.field,
            entry.uri,
            len(remote.files),
            remote.total_bytes,
            done,
        )
        todo = [f for f in remote.files if not cache.is_verified(record, f)]
        progress = self._progress = _Progress(index, done)
        try:
            if len(todo) <= 1 or WORKERS == 1:
                never = threading.Event()
                for f in todo:
                    self._fetch_file(entry, source, cache, record, remote, progress, f, never)
            else:
                self._fetch_parallel(entry, source, cache, record, remote, progress, todo)
        except BaseException:
            self._measure(force=True)  # cut short (a failure to retry, SIGTERM): the bytes kept
            raise
        finally:
            self._progress = None
        for stale in cache.remove_stale(remote):
            log.info("%s: removed %s (not in %s)", entry.field, stale, remote.revision)
        manifest = cache.complete(entry.uri, remote)
        self.state.update_download(index, state=DownloadState.DONE, bytesDone=remote.total_bytes, error=None)
        log.info("%s: %s complete (%d bytes)", entry.field, entry.uri, remote.total_bytes)
        return manifest

    def _fetch_file(
        self,
        entry: SourceEntry,
        source,
        cache: Entry,
        record: dict,
        remote: Remote,
        progress: _Progress,
        f,
        abort: threading.Event,
    ) -> None:
        """One file: download (resuming), verify (twice at most), move into files/."""
        for attempt in range(1, VERIFY_TRIES + 1):
            with progress.lock:
                partial = cache.partial_path(f)  # PARTIAL.json is shared by the workers
                progress.partials.add(partial)
            before = partial.stat().st_size if partial.exists() else 0
            try:
                source.download(f, partial, remote.revision, abort)
                problem = verify(partial, getattr(source, "expected", lambda same: same)(f))
            except Changed as changed:
                problem = str(changed)
            finally:
                if partial.exists() and partial.stat().st_size > before:
                    self._progressed = True
            if problem is None:
                cache.install(partial, f)
                with progress.lock:
                    cache.mark_verified(record, f)  # VERIFIED.json too is shared
                    progress.partials.discard(partial)
                    progress.done += f.size
                self.state.update_download(progress.index, force=False, bytesDone=progress.measure())
                return
            with progress.lock:
                progress.partials.discard(partial)
            partial.unlink(missing_ok=True)
            log.warning("%s: %s (download %d of %d)", entry.field, problem, attempt, VERIFY_TRIES)
            if attempt == VERIFY_TRIES:
                raise Permanent(f"verification failed twice: {problem}")

    def _fetch_parallel(
        self, entry: SourceEntry, source, cache: Entry, record: dict, remote: Remote, progress: _Progress, todo: list
    ) -> None:
        """WORKERS files at a time. The first failure stops the others at their next chunk and is
        raised once every worker has stopped (a retry never writes beside a running download);
        SIGTERM (raised in this thread) leaves at once: the workers are daemons."""
        pending: queue.Queue = queue.Queue()
        for f in todo:
            pending.put(f)
        abort = threading.Event()
        errors: list[BaseException] = []

        def work() -> None:
            while not abort.is_set():
                try:
                    f = pending.get_nowait()
                except queue.Empty:
                    return
                try:
                    self._fetch_file(entry, source, cache, record, remote, progress, f, abort)
                except Aborted:
                    return
                except BaseException as error:  # handed to the fetching thread
                    errors.append(error)
                    abort.set()
                    return

        workers = [
            threading.Thread(target=work, name=f"fetch-{n}", daemon=True) for n in range(min(WORKERS, len(todo)))
        ]
        for worker in workers:
            worker.start()
        try:
            for worker in workers:
                while worker.is_alive():
                    worker.join(0.5)
        except BaseException:
            abort.set()
            raise
        if errors:
            raise errors[0]
