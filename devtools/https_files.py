"""DEV-ONLY: a local HTTPS file server (a CA of its own, devtools/pki.py) with a request log.

Serves a directory over TLS: HEAD and GET with Content-Length, a strong ETag (the file's md5),
Range / If-Range (206, or 200 when the ETag changed), 404 for a missing file, 403 for names
under ``forbidden``. Clients trust it through REQUESTS_CA_BUNDLE / SSL_CERT_FILE pointing at
``ca_path``. Every request is logged (``requests``, optionally JSON lines in ``log_path``);
``throttle_bps`` slows bodies, ``fail_next`` answers the next requests with an error.

    python -m devtools.https_files --root DIR --dir-for-ca DIR [--port 0] [--log FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from devtools import pki
from devtools.hf_endpoint import _send_file
from devtools.request_log import RequestLog


class HttpsFiles(RequestLog):
    def __init__(
        self,
        root: Path,
        cert_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_path: Path | None = None,
        throttle_bps: int | None = None,
        forbidden: tuple[str, ...] = (),
    ):
        super().__init__(log_path)
        self.root = Path(root)
        self.throttle_bps = throttle_bps
        self.forbidden = set(forbidden)
        self._etags: dict[tuple, str] = {}
        cert_dir = Path(cert_dir)
        cert_dir.mkdir(parents=True, exist_ok=True)
        ca = pki.make_ca("sft-operator-test-files-ca")
        serving = pki.make_serving_cert(ca, (host, "127.0.0.1"), ("localhost",), common_name="https-files")
        self.ca_path = cert_dir / "ca.pem"
        self.ca_path.write_bytes(ca.cert_pem)
        (cert_dir / "tls.crt").write_bytes(serving.cert_pem + ca.cert_pem)
        (cert_dir / "tls.key").write_bytes(serving.key_pem)
        files = self

        class Handler(_Files):
            server_files = files

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_dir / "tls.crt", cert_dir / "tls.key")
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"https://{host}:{port}"

    def start(self) -> "HttpsFiles":
        threading.Thread(target=self._server.serve_forever, name="https-files", daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "HttpsFiles":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def downloads(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == "GET" and r["path"] == path and r["status"] in (200, 206)]

    def etag(self, path: Path) -> str:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key not in self._etags:
                self._etags[key] = '"' + hashlib.md5(path.read_bytes()).hexdigest() + '"'
            return self._etags[key]


class _Files(BaseHTTPRequestHandler):
    server_files: HttpsFiles
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        with self.server_files.in_flight():
            self._serve(head=True)

    def do_GET(self) -> None:
        with self.server_files.in_flight():
            self._serve(head=False)

    def _plain(self, status: int, *, head: bool) -> None:
        body = f"{status}\n".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)
        self._record(status, 0)

    def _record(self, status: int, sent: int) -> None:
        self.server_files.log(
            {
                "t": round(time.time(), 3),
                "method": self.command,
                "path": urlsplit(self.path).path,
                "range": self.headers.get("Range"),
                "status": status,
                "bytes": sent,
            }
        )

    def _serve(self, *, head: bool) -> None:
        files = self.server_files
        failure = files.take_failure()
        if failure is not None:
            return self._plain(failure, head=head)
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        if rel in files.forbidden:
            return self._plain(403, head=head)
        path = (files.root / rel).resolve()
        if files.root.resolve() not in path.parents or not path.is_file():
            return self._plain(404, head=head)
        size = path.stat().st_size
        etag = files.etag(path)
        start, end, status = 0, size - 1, 200
        wanted = self.headers.get("Range")
        if wanted and wanted.startswith("bytes=") and self.headers.get("If-Range") in (None, etag):
            first, _, last = wanted[len("bytes=") :].partition("-")
            start = int(first or 0)
            end = min(int(last), size - 1) if last else size - 1
            status = 206
        self.send_response(status)
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        sent = 0 if head else _send_file(self.wfile, path, start, end - start + 1, files.throttle_bps)
        self._record(status, sent)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--cert-dir", type=Path, required=True, help="writes ca.pem (trust it), tls.crt, tls.key")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", type=Path)
    args = parser.parse_args(argv)
    server = HttpsFiles(args.root, args.cert_dir, host=args.host, port=args.port, log_path=args.log).start()
    print(server.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
