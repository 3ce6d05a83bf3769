"""DEV-ONLY: a local S3-compatible server (moto's) behind a logging proxy, for tests and e2e.

moto runs in a virtualenv of its own (``~/.cache/sft-operator/object-store-venv-<hash>``, made
on first use from devtools/object-store-constraints.txt): botocore, which moto needs, caps
python-dateutil below 3 and kubernetes 37 in .venv requires 3 or later, so the two cannot share
one environment. In front of it a small proxy in this process logs every request (method, path,
Range, status, bytes) so tests count downloads per object, and can slow bodies down
(``throttle_bps``) or answer the next requests with an error (``fail_next``).

What moto proves and does not (docs/data.md): it speaks the S3 REST API as the MinIO client
calls it (SigV4-signed requests, ListObjectsV2, HEAD, ranged GET, multipart upload, the XML
errors NoSuchBucket / NoSuchKey); it does not check signatures or permissions (any key works),
nor behave like AWS under load.

    python -m devtools.object_store [--host 0.0.0.0] [--port 0] [--log FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from devtools.request_log import RequestLog

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "devtools" / "object-store-constraints.txt"
CACHE = Path(os.environ.get("SFT_CACHE_DIR") or Path.home() / ".cache" / "sft-operator")
PACKAGES = ("moto[s3]==5.2.5", "flask", "flask-cors")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
CHUNK = 64 * 1024
ACCESS_KEY = "sft-test-access-key"
SECRET_KEY = "sft-test-secret-key-0123456789"


def venv_dir() -> Path:
    digest = hashlib.sha256(CONSTRAINTS.read_bytes() + "\n".join(PACKAGES).encode()).hexdigest()[:12]
    return CACHE / f"object-store-venv-{digest}"


def ensure_venv() -> Path:
    """The moto virtualenv's python, made once (about 30 s) and reused."""
    venv = venv_dir()
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if stamp.exists():
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    tmp = venv.with_name(venv.name + f".tmp{os.getpid()}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(tmp)], check=True)
    result = subprocess.run(
        [str(tmp / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "-c", str(CONSTRAINTS), *PACKAGES],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"cannot install the local S3 server ({' '.join(PACKAGES)}): {result.stderr[-2000:]}")
    # A venv's scripts name their own path: rename by re-creating is not needed, the python
    # binary is a symlink and `-m` runs use no script shebangs.
    if venv.exists():
        subprocess.run(["rm", "-rf", str(venv)], check=True)
    tmp.rename(venv)
    stamp.write_text("ok\n")
    return python


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ObjectStore(RequestLog):
    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, log_path: Path | None = None, throttle_bps: int | None = None
    ):
        super().__init__(log_path)
        self.host = host
        self.throttle_bps = throttle_bps
        self._moto: subprocess.Popen | None = None
        self._moto_port = 0
        store = self

        class Handler(_Proxy):
            object_store = store

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def env(self) -> dict[str, str]:
        """What a client needs (the sidecar reads these as boto3 does)."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
        }

    def start(self, timeout: float = 60) -> "ObjectStore":
        python = ensure_venv()
        self._moto_port = _free_port("127.0.0.1")
        self._moto = subprocess.Popen(
            [str(python), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self._moto_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self._moto_port), timeout=1).close()
                break
            except OSError:
                if self._moto.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto did not start on port {self._moto_port}")
                time.sleep(0.1)
        threading.Thread(target=self._server.serve_forever, name="object-store-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._moto is not None:
            self._moto.terminate()
            try:
                self._moto.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._moto.kill()
                self._moto.wait()

    def __enter__(self) -> "ObjectStore":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def client(self):
        """A MinIO client for test setup (buckets, objects)."""
        from minio import Minio

        host = urlsplit(self.url).netloc
        return Minio(host, access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False, region="us-east-1")

    def object_downloads(self, bucket: str, key: str) -> list[dict]:
        return [
            r
            for r in self.requests
            if r["method"] == "GET" and r["path"] == f"/{bucket}/{key}" and r["status"] in (200, 206)
        ]

    def uploads(self, bucket: str, key: str) -> list[dict]:
        return [
            r
            for r in self.requests
            if r["method"] in ("PUT", "POST") and r["path"] == f"/{bucket}/{key}" and r["status"] == 200
        ]


class _Proxy(BaseHTTPRequestHandler):
    object_store: ObjectStore
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        with self.object_store.in_flight():
            self._forward()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _forward(self) -> None:
        store = self.object_store
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        entry = {
            "t": round(time.time(), 3),
            "method": self.command,
            "path": path,
            "query": urlsplit(self.path).query,
            "range": self.headers.get("Range"),
        }
        failure = store.take_failure()
        if failure is not None:
            payload = (
                b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
                b"<Message>injected</Message></Error>"
            )
            self.send_response(failure)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            store.log({**entry, "status": failure, "bytes": 0})
            return
        upstream = http.client.HTTPConnection("127.0.0.1", store._moto_port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            self.send_response(response.status)
            data = None
            if response.getheader("Content-Length") is None and self.command != "HEAD":
                data = response.read()
            for name, value in response.getheaders():
                if name.lower() not in HOP_BY_HOP and not (data is not None and name.lower() == "content-length"):
                    self.send_header(name, value)
            if data is not None:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            sent = 0
            if self.command != "HEAD":
                if data is not None:
                    self.wfile.write(data)
                    sent = len(data)
                else:
                    sent = _pump(response, self.wfile, store.throttle_bps)
            store.log({**entry, "status": response.status, "bytes": sent})
        except (BrokenPipeError, ConnectionResetError):
            store.log({**entry, "status": -1, "bytes": 0})
        finally:
            upstream.close()


def _pump(response, out, throttle_bps: int | None) -> int:
    sent = 0
    began = time.monotonic()
    try:
        while chunk := response.read(CHUNK):
            out.write(chunk)
            sent += len(chunk)
            if throttle_bps:
                ahead = sent / throttle_bps - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", type=Path)
    args = parser.parse_args(argv)
    store = ObjectStore(host=args.host, port=args.port, log_path=args.log).start()
    print(store.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        store.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
