"""Remote sources and the export target: what a URI means and where its files land (pure).

Shared by the operator (validation, rendering the pods' config), the transfer sidecar in the
trainer image (downloads and exports) and the launcher (waits for the downloads). Nothing here
touches the network.

Sources (``spec.modelPath``, ``spec.dataPath``)::

    hf://<org>/<repo>[@<revision>]                  a model snapshot (modelPath)
    <org>/<repo>, <repo>                            the same, written as a Hugging Face id
    hf://datasets/<org>/<repo>[@<revision>]/<file>  one file of a dataset repo (dataPath)
    s3://<bucket>/<prefix>                          modelPath: every object under the prefix
    s3://<bucket>/<key>                             dataPath: one object
    https://<host>/<path>                           dataPath: one file
    /an/absolute/path                               already in the pod: nothing to fetch

Each fetched source gets one directory in the source cache, named by its URI, so that a second
job naming the same URI on the same volume finds it complete and fetches nothing::

    <cache>/<key>/files/...        the files, as the trainer reads them
    <cache>/<key>/COMPLETE.json    SourceManifest, written after every file was verified

The transfer sidecar reports to the reporter through ``<ckpt dir>/sft-operator/TRANSFERS.json``
(TransferState): per source the bytes done and total, then what was fetched; per exported
checkpoint its remote URI.
"""

from __future__ import annotations

import enum
import hashlib
import json
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sft_core.wire import MAX_API_INT

HF_SCHEME = "hf://"
S3_SCHEME = "s3://"
HTTPS_SCHEME = "https://"
HF_DATASETS_PREFIX = "datasets/"

# Under the source cache's root (the checkpoint volume's root, or the cache claim's).
SOURCE_FILES_DIR = "files"
SOURCE_MANIFEST_FILE = "COMPLETE.json"
# Under the checkpoint directory: the transfer sidecar's report (read by the reporter).
TRANSFER_STATE_FILE = "sft-operator/TRANSFERS.json"
# Under the checkpoint directory: written once a restore from the export target is over (or
# found nothing to restore); the launcher waits for it when the job restores.
RESTORE_DONE_FILE = "sft-operator/RESTORED"
# Written last into each exported checkpoint's remote prefix: readers treat a prefix without it
# as incomplete (an upload cut short).
EXPORT_COMPLETE_OBJECT = ".sft-export-complete.json"

# A Hugging Face repo name part: letters, digits, '-', '_', '.'; never '..' or a leading '.'.
_HF_PART = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}"
_HF_REPO = re.compile(rf"^(?P<repo>{_HF_PART}(?:/{_HF_PART})?)(?:@(?P<revision>[A-Za-z0-9][A-Za-z0-9_./-]{{0,199}}))?$")
_HF_DATASET = re.compile(
    rf"^datasets/(?P<repo>{_HF_PART}/{_HF_PART})(?:@(?P<revision>[A-Za-z0-9][A-Za-z0-9_.-]{{0,199}}))?/(?P<file>.+)$"
)
# An S3 bucket name (the common rules: 3-63 lowercase letters, digits, '.', '-').
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class SourceKind(str, enum.Enum):
    HF_MODEL = "hf-model"
    HF_DATASET_FILE = "hf-dataset-file"
    S3_PREFIX = "s3-prefix"
    S3_OBJECT = "s3-object"
    HTTPS_FILE = "https-file"


class SourceProblem(ValueError):
    """A source URI that cannot be fetched as written."""


@dataclass(frozen=True)
class Source:
    """A parsed remote source. ``uri`` is canonical (a bare Hugging Face id becomes hf://)."""

    kind: SourceKind
    uri: str
    # hf: "org/repo"; s3: the bucket; https: the host
    repo: str
    # hf: the revision asked for (None: the default branch); others: None
    revision: str | None = None
    # hf dataset file / s3 key or prefix / https path: the path part; hf model: ""
    path: str = ""

    @property
    def is_file(self) -> bool:
        return self.kind in (SourceKind.HF_DATASET_FILE, SourceKind.S3_OBJECT, SourceKind.HTTPS_FILE)

    @property
    def cache_key(self) -> str:
        """The source's directory name in the cache: readable, unique per URI."""
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", self.uri.split("://", 1)[-1]).strip("-.")[:48].strip("-.")
        digest = hashlib.sha256(self.uri.encode()).hexdigest()[:12]
        return f"{slug}-{digest}" if slug else digest

    def file_name(self) -> str:
        """For a file source: the name it has in the cache (its last path part)."""
        return posixpath.basename(self.path.rstrip("/")) or "data"

    def local_path(self, cache_root: str) -> str:
        """Where the trainer reads the source: a directory (a model) or a file (data)."""
        files = posixpath.join(cache_root, self.cache_key, SOURCE_FILES_DIR)
        return posixpath.join(files, self.file_name()) if self.is_file else files


def is_remote(value: str) -> bool:
    """Whether a modelPath/dataPath names something to fetch (not a path already in the pod)."""
    return not value.startswith("/")


def parse_source(value: str, *, model: bool) -> Source:
    """A modelPath (``model=True``) or dataPath value as a Source; raises SourceProblem saying
    what is wrong. Absolute paths are not sources: check ``is_remote`` first."""
    if value.startswith(HF_SCHEME):
        return _parse_hf(value[len(HF_SCHEME) :], value, model=model)
    if value.startswith(S3_SCHEME):
        return _parse_s3(value, model=model)
    if value.startswith(HTTPS_SCHEME):
        return _parse_https(value, model=model)
    if "://" in value:
        scheme = value.split("://", 1)[0]
        raise SourceProblem(
            f"{value!r}: scheme {scheme}:// is not supported (hf://, s3://, https:// or an absolute path)"
        )
    if not model:
        raise SourceProblem(
            f"{value!r} is neither an absolute path in the pod nor a URI (hf://datasets/..., s3://..., https://...)"
        )
    # A bare Hugging Face id means hf://.
    return _parse_hf(value, HF_SCHEME + value, model=True, bare=True)


def _parse_hf(rest: str, original: str, *, model: bool, bare: bool = False) -> Source:
    if rest.startswith(HF_DATASETS_PREFIX):
        if model:
            raise SourceProblem(f"{original!r} is a dataset; a model is hf://<org>/<repo>[@<revision>]")
        match = _HF_DATASET.match(rest)
        if not match:
            raise SourceProblem(f"{original!r}: write hf://datasets/<org>/<repo>[@<revision>]/<file>")
        file = match["file"]
        if file.endswith("/") or any(p in ("", ".", "..") for p in file.split("/")):
            raise SourceProblem(f"{original!r}: {file!r} is not a file path inside the dataset repo")
        revision = match["revision"]
        uri = f"{HF_SCHEME}{HF_DATASETS_PREFIX}{match['repo']}{'@' + revision if revision else ''}/{file}"
        return Source(SourceKind.HF_DATASET_FILE, uri, match["repo"], revision, file)
    if not model:
        raise SourceProblem(
            f"{original!r}: data from Hugging Face is one file of a dataset: hf://datasets/<org>/<repo>/<file>"
        )
    match = _HF_REPO.match(rest)
    if not match or ".." in rest:
        what = "a Hugging Face id (<org>/<repo>) or an absolute path" if bare else "hf://<org>/<repo>[@<revision>]"
        raise SourceProblem(f"{original if not bare else rest!r}: expected {what}")
    revision = match["revision"]
    if revision and (".." in revision or revision.endswith("/")):
        raise SourceProblem(f"{original!r}: {revision!r} is not a revision")
    uri = f"{HF_SCHEME}{match['repo']}{'@' + revision if revision else ''}"
    return Source(SourceKind.HF_MODEL, uri, match["repo"], revision, "")


def _parse_s3(value: str, *, model: bool) -> Source:
    bucket, _, key = value[len(S3_SCHEME) :].partition("/")
    if not _S3_BUCKET.match(bucket) or ".." in bucket:
        raise SourceProblem(f"{value!r}: {bucket!r} is not an S3 bucket name")
    parts = [p for p in key.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise SourceProblem(f"{value!r}: the key may not contain '.' or '..' parts")
    if model:
        # A model is a directory: every object under the prefix.
        prefix = "/".join(parts) + "/" if parts else ""
        return Source(SourceKind.S3_PREFIX, f"{S3_SCHEME}{bucket}/{prefix}", bucket, None, prefix)
    if not parts or key.endswith("/"):
        raise SourceProblem(f"{value!r}: data is one object: s3://<bucket>/<key>")
    return Source(SourceKind.S3_OBJECT, f"{S3_SCHEME}{bucket}/{'/'.join(parts)}", bucket, None, "/".join(parts))


def _parse_https(value: str, *, model: bool) -> Source:
    if model:
        raise SourceProblem(f"{value!r}: a model comes from hf:// or s3:// (an https:// source is one data file)")
    parts = urlsplit(value)
    if not parts.hostname or not parts.path.strip("/"):
        raise SourceProblem(f"{value!r}: expected https://<host>/<path to a file>")
    if parts.username or parts.password:
        raise SourceProblem(f"{value!r}: credentials may not be written into the URI (use a Secret)")
    if parts.query or parts.fragment:
        # A query string is where presigned URLs carry their signature: a credential that would
        # then sit in the manifest and the status.
        raise SourceProblem(
            f"https://{parts.hostname}{parts.path}?...: a query string may carry a credential and is "
            "not accepted; use s3:// with a Secret for signed access"
        )
    return Source(SourceKind.HTTPS_FILE, value, parts.hostname, None, parts.path)


def parse_export_uri(value: str) -> tuple[str, str]:
    """``s3://bucket[/prefix]`` as (bucket, prefix without a trailing '/'); raises SourceProblem."""
    if not value.startswith(S3_SCHEME):
        raise SourceProblem(f"{value!r}: the export target is s3://<bucket>[/<prefix>]")
    bucket, _, prefix = value[len(S3_SCHEME) :].partition("/")
    if not _S3_BUCKET.match(bucket):
        raise SourceProblem(f"{value!r}: {bucket!r} is not an S3 bucket name")
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise SourceProblem(f"{value!r}: the prefix may not contain '.' or '..' parts")
    return bucket, "/".join(parts)


def export_uri_of(target: str, relative: str) -> str:
    """The remote URI of a checkpoint directory (``hf_format/samples_64``) under the target."""
    bucket, prefix = parse_export_uri(target)
    key = "/".join(p for p in (prefix, relative) if p)
    return f"{S3_SCHEME}{bucket}/{key}"


# --- What the transfer sidecar writes (read by the reporter: untrusted, hence bounded) --------
class _Record(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class DownloadState(str, enum.Enum):
    PENDING = "Pending"
    DOWNLOADING = "Downloading"
    DONE = "Done"
    FAILED = "Failed"


class SourceFile(_Record):
    path: str = Field(max_length=1024)
    size: int = Field(ge=0, le=MAX_API_INT)
    # The source's ETag or content hash when it gives one ("sha256:<hex>", "md5:<hex>", "etag:<value>").
    checksum: str | None = Field(default=None, max_length=200)


class SourceManifest(_Record):
    """COMPLETE.json: what a source directory holds, written after every file was checked."""

    uri: str = Field(max_length=2048)
    revision: str | None = Field(default=None, max_length=200)
    files: list[SourceFile] = Field(max_length=100_000)
    completed_at: str = Field(alias="completedAt", max_length=64)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


class DownloadProgress(_Record):
    field: str = Field(max_length=64)  # "spec.modelPath"
    source: str = Field(max_length=2048)
    state: DownloadState
    bytes_done: int = Field(default=0, alias="bytesDone", ge=0, le=MAX_API_INT)
    bytes_total: int | None = Field(default=None, alias="bytesTotal", ge=0, le=MAX_API_INT)
    files: int | None = Field(default=None, ge=0, le=MAX_API_INT)
    revision: str | None = Field(default=None, max_length=200)
    # True when the cache already held the source: nothing was fetched.
    cached: bool = False
    error: str | None = Field(default=None, max_length=1024)


class ExportRecord(_Record):
    checkpoint: str = Field(max_length=256)  # "hf_format/samples_64"
    uri: str = Field(max_length=2048)
    bytes: int = Field(ge=0, le=MAX_API_INT)
    exported_at: str = Field(alias="exportedAt", max_length=64)


class TransferState(_Record):
    downloads: list[DownloadProgress] = Field(default_factory=list, max_length=8)
    exports: list[ExportRecord] = Field(default_factory=list, max_length=1000)
    # The last export failure while it retries (cleared by the next success).
    export_error: str | None = Field(default=None, alias="exportError", max_length=1024)
    export_attempts: int = Field(default=0, alias="exportAttempts", ge=0, le=MAX_API_INT)
    updated_at: str | None = Field(default=None, alias="updatedAt", max_length=64)


# A report larger than this is not the sidecar's (8 sources and 1000 exports fit in far less).
MAX_TRANSFER_STATE_BYTES = 4 << 20


def read_transfer_state(ckpt_dir: Path) -> TransferState | None:
    """TRANSFERS.json under the checkpoint directory, or None when absent. The volume is the
    job's own: a report that is not valid raises ValueError (the caller says so once)."""
    path = ckpt_dir / TRANSFER_STATE_FILE
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_TRANSFER_STATE_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if len(raw) > MAX_TRANSFER_STATE_BYTES:
        raise ValueError(f"{TRANSFER_STATE_FILE} is larger than {MAX_TRANSFER_STATE_BYTES} bytes")
    try:
        return TransferState.model_validate(json.loads(raw))
    except (ValueError, RecursionError, ValidationError) as exc:
        raise ValueError(f"{TRANSFER_STATE_FILE} is not a transfer report: {str(exc)[:200]}") from None
