"""hf:// sources through huggingface_hub's own code (endpoint from HF_ENDPOINT, token HF_TOKEN).

The revision is resolved once (``HfApi.repo_info``: the one revision-info request that also
decides whether a cached snapshot is still current), the snapshot listed at that commit
(``HfApi.list_repo_tree``: sizes, LFS sha256, git blob ids), and each file downloaded with
``huggingface_hub.file_download.http_get`` from ``hf_hub_url(..., revision=<commit>)``, with
``resume_size`` set to what a killed earlier attempt left in the partial file (a Range request).
hf_hub_download(local_dir=...) itself cannot resume a file: since huggingface_hub 1.x it writes
to a process-unique temporary file and deletes it on failure, so a pod killed 14 GB into a
15 GB file would fetch all 15 GB again.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path

from .cache import Remote, RemoteFile
from .config import SourceEntry
from .fetch_io import AbortableFile
from .outcome import CONNECT_TIMEOUT, READ_TIMEOUT, Permanent, TransferFailure, Transient, hf_credential

COMMIT = re.compile(r"^[0-9a-f]{40}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


_client_installed = False


def _hub():
    # Imported here: the launcher imports this package's config without the hub client.
    global _client_installed
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import huggingface_hub

    if not _client_installed:
        huggingface_hub.set_client_factory(_bounded_client)
        # http_get writes in chunks of this size: a killed download keeps whole chunks only, and
        # the partial file's size (the reported progress) moves in these steps. 10 MiB upstream.
        huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE = 256 << 10
        _client_installed = True
    return huggingface_hub


def _bounded_client():
    """huggingface_hub's client with a bound on every call: its default client has no timeout,
    and some of its calls (the tree listing) pass none, so a silent endpoint would hang us."""
    import httpx2
    from huggingface_hub.utils._http import hf_request_event_hook

    class BoundedTransport(httpx2.HTTPTransport):
        def handle_request(self, request):
            bounds = dict(request.extensions.get("timeout") or {})
            for key, default in (
                ("connect", CONNECT_TIMEOUT),
                ("read", READ_TIMEOUT),
                ("write", READ_TIMEOUT),
                ("pool", CONNECT_TIMEOUT),
            ):
                if bounds.get(key) is None:
                    bounds[key] = default
            request.extensions["timeout"] = bounds
            return super().handle_request(request)

    return httpx2.Client(
        event_hooks={"request": [hf_request_event_hook]},
        follow_redirects=True,
        transport=BoundedTransport(verify=tls_context()),
    )


def tls_context():
    """The system's trust store, or the bundle SSL_CERT_FILE / REQUESTS_CA_BUNDLE names."""
    import ssl

    bundle = os.environ.get("SSL_CERT_FILE") or os.environ.get("REQUESTS_CA_BUNDLE")
    if bundle:
        return ssl.create_default_context(cafile=bundle)
    try:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:
        return ssl.create_default_context()


class HfSource:
    def __init__(self, entry: SourceEntry, env: Mapping[str, str]):
        self.entry = entry
        self.source = entry.source
        self.env = env
        self.repo_type = "dataset" if self.source.kind.value == "hf-dataset-file" else "model"
        self.token = env.get("HF_TOKEN") or False  # False: never a token saved on disk
        self.endpoint = (env.get("HF_ENDPOINT") or "").rstrip("/") or None
        self._api = None

    @property
    def api(self):
        if self._api is None:
            self._api = _hub().HfApi(endpoint=self.endpoint, token=self.token)
        return self._api

    def needs_check(self, manifest_revision: str | None) -> bool:
        """A branch or tag may have moved; a commit id cannot."""
        return not (self.source.revision and COMMIT.match(self.source.revision))

    def revision(self) -> str:
        info = self.api.repo_info(
            self.source.repo, repo_type=self.repo_type, revision=self.source.revision, timeout=CONNECT_TIMEOUT * 3
        )
        if not info.sha:
            raise Transient(f"the endpoint returned no commit for {self.source.repo}")
        return info.sha

    def resolve(self) -> Remote:
        hub = _hub()
        commit = self.revision()
        if self.repo_type == "model":
            files = tuple(
                RemoteFile(f.path, f.size, f"sha256:{f.lfs.sha256}" if f.lfs else f"git-sha1:{f.blob_id}", f.path)
                for f in self.api.list_repo_tree(
                    self.source.repo, recursive=True, revision=commit, repo_type=self.repo_type
                )
                if isinstance(f, hub.hf_api.RepoFile)
            )
            if not files:
                raise Permanent(f"{self.source.repo} has no files at {commit}")
            return Remote(commit, files)
        url = hub.hf_hub_url(
            self.source.repo, self.source.path, repo_type="dataset", revision=commit, endpoint=self.endpoint
        )
        meta = hub.get_hf_file_metadata(url, token=self.token, timeout=CONNECT_TIMEOUT * 3, endpoint=self.endpoint)
        if meta.size is None:
            raise Transient(f"the endpoint gave no size for {self.source.path}")
        etag = (meta.etag or "").lower()
        checksum = (
            f"sha256:{etag}"
            if SHA256.match(etag)
            else f"git-sha1:{etag}"
            if COMMIT.match(etag)
            else f"etag:{meta.etag}"
            if meta.etag
            else None
        )
        return Remote(commit, (RemoteFile(self.source.file_name(), meta.size, checksum, self.source.path),))

    def download(self, f: RemoteFile, partial: Path, revision: str | None, abort: threading.Event) -> None:
        hub = _hub()
        from huggingface_hub.file_download import http_get

        url = hub.hf_hub_url(
            self.source.repo, f.ref, repo_type=self.repo_type, revision=revision, endpoint=self.endpoint
        )
        headers = hub.utils.build_hf_headers(token=self.token)
        with open(partial, "ab") as out:
            if out.tell() > f.size:  # not a prefix of this file (another blob once had this name)
                out.truncate(0)
                out.seek(0)
            http_get(
                url,
                AbortableFile(out, abort),
                resume_size=out.tell(),
                headers=headers,
                expected_size=f.size,
                displayed_filename=f.path,
            )

    def classify(self, error: BaseException) -> TransferFailure | None:
        import httpx2
        from huggingface_hub import errors as hub_errors

        repo, what = self.source.repo, f"{self.repo_type} repo"
        who = hf_credential(self.env)
        status = getattr(getattr(error, "response", None), "status_code", None)
        if isinstance(error, hub_errors.RevisionNotFoundError):
            return Permanent(f"404 Not Found: {repo} has no revision {self.source.revision or 'main'}")
        if isinstance(error, hub_errors.RemoteEntryNotFoundError):
            return Permanent(f"404 Not Found: {repo} has no file {self.source.path or ''}".rstrip())
        if isinstance(error, hub_errors.GatedRepoError):
            return Permanent(
                f"{status} gated repo: {who} has not been granted access to {repo} "
                "(accept its conditions on the Hub with that account)"
            )
        if isinstance(error, hub_errors.RepositoryNotFoundError):
            if status == 401 and not self.env.get("HF_TOKEN"):
                return Permanent(f"401 Unauthorized: {repo} does not exist or is private, and {who}")
            return Permanent(f"404 Not Found: no {what} {repo}, or {who} cannot read it")
        if status == 401:
            return Permanent(f"401 Unauthorized: {who} cannot read {repo}")
        if status == 403:
            return Permanent(f"403 Forbidden: {who} cannot read {repo}")
        if status == 416:
            return Transient("416 Range Not Satisfiable: the partial file is larger than the remote one")
        if status is not None and (status >= 500 or status in (408, 429)):
            return Transient(f"{status} from {self._host()}")
        if status is not None and status >= 400:
            return Permanent(f"{status} from {self._host()} for {repo}")
        if isinstance(
            error,
            (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError, ConnectionError, TimeoutError),
        ):
            return Transient(f"{type(error).__name__} talking to {self._host()}: {error}")
        if isinstance(error, EnvironmentError) and "Consistency check failed" in str(error):
            return Transient(f"{f_name(error)}: the download ended short")
        return None

    def _host(self) -> str:
        return self.endpoint or "the Hugging Face Hub"


def f_name(error: BaseException) -> str:
    return type(error).__name__
