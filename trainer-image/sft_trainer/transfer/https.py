"""https:// data files with requests: HEAD for the size and ETag, ranged GETs to resume.

No credentials are sent (the URI grammar refuses a userinfo part and a query string). The
server's ETag, when it gives one, must stay the same from the first HEAD to the last byte: a
resumed GET carries If-Range, so a file that changed comes back whole (200) and is started over,
and a HEAD after the download must still show the same ETag and size.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

from .cache import Remote, RemoteFile
from .config import SourceEntry
from .fetch_io import AbortableFile
from .outcome import CONNECT_TIMEOUT, READ_TIMEOUT, Permanent, TransferFailure, Transient
from .s3 import Changed

CHUNK = 1 << 20
TIMEOUT = (CONNECT_TIMEOUT, READ_TIMEOUT)


class HttpsSource:
    def __init__(self, entry: SourceEntry, env: Mapping[str, str]):
        import requests

        self.entry = entry
        self.source = entry.source
        self.url = self.source.uri
        self.session = requests.Session()
        self.session.trust_env = False  # no ~/.netrc credentials, no proxy from the environment
        self.session.verify = env.get("REQUESTS_CA_BUNDLE") or env.get("SSL_CERT_FILE") or True

    def needs_check(self, manifest_revision: str | None) -> bool:
        return False

    def _head(self) -> tuple[int, str | None]:
        response = self.session.head(self.url, allow_redirects=True, timeout=TIMEOUT)
        if response.status_code == 405:  # no HEAD: the headers of a GET, body unread
            response = self.session.get(self.url, stream=True, timeout=TIMEOUT)
            response.close()
        response.raise_for_status()
        length = response.headers.get("Content-Length")
        if length is None or response.headers.get("Content-Encoding") not in (None, "identity"):
            raise Permanent(f"{self.source.repo} gives no size for {self.source.path} (Content-Length)")
        return int(length), response.headers.get("ETag")

    def resolve(self) -> Remote:
        size, etag = self._head()
        return Remote(None, (RemoteFile(self.source.file_name(), size, f"etag:{etag}" if etag else None, self.url),))

    def download(self, f: RemoteFile, partial: Path, revision: str | None, abort: threading.Event) -> None:
        offset = partial.stat().st_size if partial.exists() else 0
        etag = (f.checksum or "").partition(":")[2] or None
        headers = {"Accept-Encoding": "identity"}
        if 0 < offset < f.size:
            headers["Range"] = f"bytes={offset}-"
            if etag and not etag.startswith("W/"):
                headers["If-Range"] = etag
        if offset < f.size:  # else the whole file is there: only the check below
            with self.session.get(self.url, headers=headers, stream=True, timeout=TIMEOUT) as response:
                response.raise_for_status()
                mode = "ab" if response.status_code == 206 else "wb"  # 200: the whole file again
                if etag and response.headers.get("ETag") not in (None, etag):
                    raise Changed(f"{f.path}: the file changed (ETag {response.headers.get('ETag')}, first {etag})")
                with open(partial, mode) as raw:
                    out = AbortableFile(raw, abort)
                    for chunk in response.iter_content(CHUNK):
                        out.write(chunk)
        size, now = self._head()
        if size != f.size or (etag and now != etag):
            raise Changed(f"{f.path}: the file changed during the download (size {size}, ETag {now})")

    def classify(self, error: BaseException) -> TransferFailure | None:
        import requests

        host = self.source.repo
        if isinstance(error, requests.exceptions.SSLError):
            return Permanent(f"TLS: {host} cannot be verified: {_reason(error)}")
        if isinstance(error, requests.HTTPError) and error.response is not None:
            status, reason = error.response.status_code, error.response.reason
            if status in (401, 403):
                return Permanent(
                    f"{status} {reason}: {host} refused the download (https sources are fetched without credentials)"
                )
            if status in (404, 410):
                return Permanent(f"{status} {reason}: {host} has no {self.source.path}")
            if status >= 500 or status in (408, 429):
                return Transient(f"{status} {reason} from {host}")
            return Permanent(f"{status} {reason} from {host}")
        if isinstance(error, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)):
            return Transient(f"{type(error).__name__} talking to {host}: {_reason(error)}")
        return None


def _reason(error: BaseException) -> str:
    text = str(error.args[0] if error.args else error)
    return text[:200]
