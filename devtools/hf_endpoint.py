"""DEV-ONLY: a local Hugging Face Hub endpoint for huggingface_hub's download code (HF_ENDPOINT).

The Hub cannot be reached here or in CI. This serves a directory of repos with exactly the
endpoints huggingface_hub 2.4.0 calls to resolve a revision, list a snapshot and download files:

    GET  /api/{models|datasets}/<repo>[/revision/<rev>]         repo info: {"id", "sha", ...}
    GET  /api/{models|datasets}/<repo>/tree/<rev>[/<path>]      the file listing (one page)
    HEAD/GET /<repo>/resolve/<rev>/<file>                       a model file (Range supported)
    HEAD/GET /datasets/<repo>/resolve/<rev>/<file>              a dataset file

with the headers the client reads: X-Repo-Commit, ETag (the git blob sha1, or the sha256 for
LFS files), X-Linked-Etag and X-Linked-Size (LFS files), Content-Range for a Range request; and
the Hub's errors: 404 with X-Error-Code RepoNotFound / RevisionNotFound / EntryNotFound, 401
RepoNotFound without a token on a private repo, 401 "Invalid credentials in Authorization
header" for a token it does not know.

Layout of ``root``: ``models/<org>/<name>/...`` and ``datasets/<org>/<name>/...``; every file
in a repo directory is in its one commit, whose sha is a hash of the listing (change a file and
the branch ``main`` moves). Files of ``lfs_min_size`` bytes or more, and weights by name, are
LFS files. What it does not do: other branches or tags, old commits, redirects to a CDN, xet
storage, gated repos, rate limits (see docs/data.md).

Every request is logged (``requests``; with ``log_path`` also as JSON lines: ``t0`` and ``t``
its start and end) so tests can count downloads per file. ``throttle_bps`` slows file bodies; ``fail_next(n, status)`` answers the next
n requests with an error (transient failures).

    python -m devtools.hf_endpoint --root DIR [--port 0] [--token T] [--private org/x] [--log F]
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from devtools.request_log import RequestLog

LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.gguf", "*.parquet", "*.arrow")
INVALID_TOKEN_MESSAGE = "Invalid credentials in Authorization header"
REPO_TYPES = {"models": "model", "datasets": "dataset"}
CHUNK = 64 * 1024


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int
    git_sha1: str
    sha256: str | None  # LFS files only

    @property
    def etag(self) -> str:
        return self.sha256 or self.git_sha1


def git_blob_sha1(data_path: Path) -> str:
    """Git's object id of a file: sha1 over 'blob <size>\\0' and the content."""
    digest = hashlib.sha1(f"blob {data_path.stat().st_size}\0".encode())
    with open(data_path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(data_path: Path) -> str:
    digest = hashlib.sha256()
    with open(data_path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def publish(root: Path, repo_type: str, repo_id: str, files: dict[str, bytes | Path]) -> Path:
    """Write files into a repo of the endpoint's root (a Path value is copied)."""
    repo_dir = Path(root) / f"{repo_type}s" / repo_id
    for rel, content in files.items():
        target = repo_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.read_bytes() if isinstance(content, Path) else content)
    return repo_dir


class HfEndpoint(RequestLog):
    def __init__(
        self,
        root: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tokens: dict[str, set[str] | None] | None = None,
        private: set[str] = frozenset(),
        lfs_min_size: int = 1 << 20,
        throttle_bps: int | None = None,
        log_path: Path | None = None,
    ):
        super().__init__(log_path)
        self.root = Path(root)
        # token -> the private repos it may read (None: all of them)
        self.tokens = dict(tokens or {})
        self.private = set(private)
        self.lfs_min_size = lfs_min_size
        self.throttle_bps = throttle_bps
        # Files (repo-relative paths) served with their first byte changed: a corrupt transfer.
        self.corrupt: set[str] = set()
        self._hash_cache: dict[tuple, RepoFile] = {}
        endpoint = self

        class Handler(_Handler):
            server_endpoint = endpoint

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HfEndpoint":
        self._thread = threading.Thread(target=self._server.serve_forever, name="hf-endpoint", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "HfEndpoint":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def file_downloads(self, file_path: str) -> list[dict]:
        """The GETs of a file's resolve URL that sent a body (full or ranged)."""
        return [
            r
            for r in self.requests
            if r["method"] == "GET"
            and "/resolve/" in r["path"]
            and unquote(r["path"]).endswith("/" + file_path)
            and r["status"] in (200, 206)
        ]

    # --- the repos ------------------------------------------------------------------------
    def repo_dir(self, kind: str, repo_id: str) -> Path | None:
        path = self.root / kind / repo_id
        return path if path.is_dir() else None

    def _lfs(self, rel: str, size: int) -> bool:
        return size >= self.lfs_min_size or any(fnmatch.fnmatch(rel, p) for p in LFS_PATTERNS)

    def _describe(self, repo_dir: Path, file: Path) -> RepoFile:
        stat = file.stat()
        rel = file.relative_to(repo_dir).as_posix()
        key = (str(file), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            cached = self._hash_cache.get(key)
        if cached is None:
            sha256 = file_sha256(file) if self._lfs(rel, stat.st_size) else None
            cached = RepoFile(rel, stat.st_size, git_blob_sha1(file), sha256)
            with self._lock:
                self._hash_cache[key] = cached
        return cached

    def listing(self, repo_dir: Path) -> list[RepoFile]:
        files = sorted(p for p in repo_dir.rglob("*") if p.is_file())
        return [self._describe(repo_dir, p) for p in files]

    @staticmethod
    def commit_of(files: list[RepoFile]) -> str:
        digest = hashlib.sha1()
        for f in files:
            digest.update(f"{f.path}\0{f.git_sha1}\0".encode())
        return digest.hexdigest()


class _Handler(BaseHTTPRequestHandler):
    server_endpoint: HfEndpoint
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # the request log replaces stderr noise
        pass

    def do_HEAD(self) -> None:
        with self.server_endpoint.in_flight():
            self._serve(head=True)

    def do_GET(self) -> None:
        with self.server_endpoint.in_flight():
            self._serve(head=False)

    # --- responses ----------------------------------------------------------------------------
    def _send(self, status: int, headers: dict[str, str], body: bytes = b"", *, head: bool = False) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)
        self._record(status, 0 if head else len(body))

    def _error(self, status: int, code: str | None, message: str, *, head: bool, commit: str | None = None) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(status, headers, json.dumps({"error": message}).encode(), head=head)

    def _record(self, status: int, sent: int) -> None:
        self.server_endpoint.log(
            {
                "t0": round(self._started, 3),
                "t": round(time.time(), 3),
                "method": self.command,
                "path": urlsplit(self.path).path,
                "range": self.headers.get("Range"),
                "status": status,
                "bytes": sent,
                "auth": self.headers.get("Authorization") is not None,
            }
        )

    # --- routing ------------------------------------------------------------------------------
    def _serve(self, *, head: bool) -> None:
        self._started = time.time()
        ep = self.server_endpoint
        failure = ep.take_failure()
        if failure is not None:
            return self._error(failure, None, f"injected failure {failure}", head=head)
        parts = [unquote(p) for p in urlsplit(self.path).path.split("/") if p]
        try:
            if parts[:1] == ["api"] and len(parts) >= 3 and parts[1] in REPO_TYPES:
                return self._api(parts[1], parts[2:], head=head)
            if "resolve" in parts:
                kind = "models"
                if parts[0] == "datasets":
                    kind, parts = "datasets", parts[1:]
                at = parts.index("resolve")
                if at in (1, 2) and len(parts) > at + 2:
                    return self._resolve(
                        kind, "/".join(parts[:at]), parts[at + 1], "/".join(parts[at + 2 :]), head=head
                    )
        except (BrokenPipeError, ConnectionResetError):
            return
        self._error(404, None, "Not Found", head=head)

    def _auth(self, kind: str, repo_id: str, *, head: bool) -> Path | None:
        """The repo's directory, or None after answering as the Hub does."""
        ep = self.server_endpoint
        header = self.headers.get("Authorization", "")
        token = header[len("Bearer ") :] if header.startswith("Bearer ") else None
        if token is not None and token not in ep.tokens:
            self._error(401, None, INVALID_TOKEN_MESSAGE, head=head)
            return None
        repo_dir = ep.repo_dir(kind, repo_id)
        key = f"{REPO_TYPES[kind]}:{repo_id}"
        readable = repo_dir is not None and (
            key not in ep.private
            and repo_id not in ep.private
            or token is not None
            and (ep.tokens[token] is None or repo_id in ep.tokens[token])
        )
        if not readable:
            # The Hub hides a private repo: without a token 401, with one 404 (as if missing).
            status = 404 if token is not None else 401
            self._error(status, "RepoNotFound", "Repository not found", head=head)
            return None
        return repo_dir

    def _commit(self, repo_dir: Path, revision: str) -> tuple[list[RepoFile], str | None]:
        files = self.server_endpoint.listing(repo_dir)
        commit = HfEndpoint.commit_of(files)
        return files, commit if revision in ("main", commit) else None

    def _api(self, kind: str, rest: list[str], *, head: bool) -> None:
        for marker in ("revision", "tree"):
            if marker in rest[1:3]:
                at = rest.index(marker)
                repo_id, revision, sub = (
                    "/".join(rest[:at]),
                    rest[at + 1] if len(rest) > at + 1 else "main",
                    rest[at + 2 :],
                )
                break
        else:
            marker, repo_id, revision, sub = "revision", "/".join(rest), "main", []
        repo_dir = self._auth(kind, repo_id, head=head)
        if repo_dir is None:
            return
        files, commit = self._commit(repo_dir, revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head=head)
        if marker == "revision":
            body = {
                "id": repo_id,
                "sha": commit,
                "private": repo_id in self.server_endpoint.private,
                "lastModified": "2026-01-01T00:00:00.000Z",
                "siblings": [{"rfilename": f.path} for f in files],
            }
        else:
            prefix = "/".join(sub)
            body = []
            dirs = sorted({str(Path(f.path).parent) for f in files} - {"."})
            for d in dirs:
                if d.startswith(prefix):
                    body.append(
                        {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                    )
            for f in files:
                if f.path.startswith(prefix):
                    entry = {"type": "file", "oid": f.git_sha1, "size": f.size, "path": f.path}
                    if f.sha256:
                        entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
                    body.append(entry)
        self._send(200, {"Content-Type": "application/json"}, json.dumps(body).encode(), head=head)

    def _resolve(self, kind: str, repo_id: str, revision: str, rel: str, *, head: bool) -> None:
        repo_dir = self._auth(kind, repo_id, head=head)
        if repo_dir is None:
            return
        files, commit = self._commit(repo_dir, revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head=head)
        entry = next((f for f in files if f.path == rel), None)
        if entry is None:
            return self._error(404, "EntryNotFound", f"{rel} does not exist on {revision}", head=head, commit=commit)
        headers = {
            "X-Repo-Commit": commit,
            "ETag": f'"{entry.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if entry.sha256:
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        start, end, status = 0, entry.size - 1, 200
        wanted = self.headers.get("Range")
        if wanted and wanted.startswith("bytes="):
            first, _, last = wanted[len("bytes=") :].partition("-")
            start = int(first or 0)
            end = min(int(last), entry.size - 1) if last else entry.size - 1
            if start >= entry.size:
                headers["Content-Range"] = f"bytes */{entry.size}"
                return self._send(416, headers, head=head)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        length = max(end - start + 1, 0)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        sent = 0
        if not head:
            sent = _send_file(
                self.wfile,
                repo_dir / rel,
                start,
                length,
                self.server_endpoint.throttle_bps,
                corrupt=rel in self.server_endpoint.corrupt,
            )
        self._record(status, sent)


def _send_file(out, path: Path, start: int, length: int, throttle_bps: int | None, *, corrupt: bool = False) -> int:
    """Write a byte range of a file; returns the bytes sent (fewer when the client went away).
    ``corrupt``: the file's first byte is sent changed."""
    sent = 0
    began = time.monotonic()
    try:
        with open(path, "rb") as handle:
            handle.seek(start)
            while sent < length:
                chunk = handle.read(min(CHUNK, length - sent))
                if not chunk:
                    break
                if corrupt and start == 0 and sent == 0:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                out.write(chunk)
                sent += len(chunk)
                if throttle_bps:
                    ahead = sent / throttle_bps - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)
    except OSError:  # the client went away (a reset, a broken pipe, a TLS EOF): a killed download
        pass
    return sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", action="append", default=[], help="a token that may read every private repo")
    parser.add_argument("--private", action="append", default=[], help="a private repo id")
    parser.add_argument("--log", type=Path, help="append every request as a JSON line")
    parser.add_argument("--throttle-bps", type=int)
    args = parser.parse_args(argv)
    endpoint = HfEndpoint(
        args.root,
        host=args.host,
        port=args.port,
        tokens={t: None for t in args.token},
        private=set(args.private),
        throttle_bps=args.throttle_bps,
        log_path=args.log,
    )
    print(endpoint.url, flush=True)
    try:
        endpoint._server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
