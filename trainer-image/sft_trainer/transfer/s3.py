"""s3:// sources and the export target, with the MinIO client (any S3-compatible store).

Why not boto3: botocore caps python-dateutil below 3 while kubernetes 37 (the operator's client,
installed in the same development environment) requires 3 or later, so the two cannot be
installed together under one constraints file. The MinIO SDK speaks the same S3 API (SigV4,
ranged GETs, multipart uploads) with urllib3, which is already pinned.

Configuration as boto3 reads it: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN,
AWS_ENDPOINT_URL (default: AWS), AWS_REGION (or AWS_DEFAULT_REGION); without keys, web identity
(AWS_WEB_IDENTITY_TOKEN_FILE, IRSA) or the container credentials endpoint when set, else
anonymous (public buckets).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from .cache import Remote, RemoteFile
from .config import SourceEntry
from .fetch_io import AbortableFile
from .outcome import CONNECT_TIMEOUT, READ_TIMEOUT, Permanent, TransferFailure, Transient, s3_credential

CHUNK = 1 << 20
_DENIED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
    "AccountProblem",
}


class Changed(Exception):
    """The object changed while it was being downloaded (its ETag is another one)."""


def endpoint_of(env: Mapping[str, str]) -> tuple[str, bool, str]:
    """(host[:port], secure, region) from AWS_ENDPOINT_URL / AWS_REGION (pure)."""
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    url = (env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or "").strip()
    if not url:
        return (f"s3.{region}.amazonaws.com", True, region)
    parts = urlsplit(url if "://" in url else f"https://{url}")
    return (parts.netloc, parts.scheme != "http", region)


def plain_md5(etag: str | None) -> str | None:
    """An S3 ETag is the object's md5 only for a single-part upload without SSE-KMS (pure)."""
    value = (etag or "").strip('"').lower()
    return value if len(value) == 32 and all(c in "0123456789abcdef" for c in value) else None


def etag_is_md5(headers: Mapping[str, str]) -> bool:
    """Whether a GET's headers allow reading a 32-hex ETag as the md5 (pure): not for objects
    encrypted with KMS or a customer key, whose ETag is no digest of the content."""
    lower = {k.lower(): v for k, v in headers.items()}
    kms = lower.get("x-amz-server-side-encryption", "").startswith("aws:kms")
    return not kms and "x-amz-server-side-encryption-customer-algorithm" not in lower


def make_client(env: Mapping[str, str]):
    import certifi
    import urllib3
    from minio import Minio
    from minio.credentials.providers import IamAwsProvider

    host, secure, region = endpoint_of(env)
    bundle = env.get("AWS_CA_BUNDLE") or env.get("SSL_CERT_FILE") or env.get("REQUESTS_CA_BUNDLE") or certifi.where()
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT),
        retries=urllib3.Retry(total=1, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        cert_reqs="CERT_REQUIRED",
        ca_certs=bundle,
        maxsize=4,
    )
    kwargs: dict = {"secure": secure, "region": region, "http_client": http}
    if env.get("AWS_ACCESS_KEY_ID"):
        kwargs.update(
            access_key=env["AWS_ACCESS_KEY_ID"],
            secret_key=env.get("AWS_SECRET_ACCESS_KEY", ""),
            session_token=env.get("AWS_SESSION_TOKEN") or None,
        )
    elif (
        env.get("AWS_WEB_IDENTITY_TOKEN_FILE")
        or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        or env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
    ):
        kwargs["credentials"] = IamAwsProvider()
    return Minio(host, **kwargs)


def classify(
    error: BaseException, env: Mapping[str, str], what: str, *, bucket: str, key: str | None = None
) -> TransferFailure | None:
    """An S3 failure as Permanent or Transient with its problem text; None: not an S3 failure."""
    import urllib3
    from minio.error import InvalidResponseError, S3Error, ServerError

    host = endpoint_of(env)[0]
    if isinstance(error, S3Error):
        status = getattr(error.response, "status", None)
        if error.code == "NoSuchBucket":
            return Permanent(f"{status or 404} NoSuchBucket: bucket {bucket} does not exist at {host}")
        if error.code in ("NoSuchKey", "ResourceNotFound"):
            return Permanent(f"{status or 404} NoSuchKey: bucket {bucket} has no object {key}")
        if error.code in _DENIED or status in (401, 403):
            return Permanent(f"{status or 403} {error.code}: {s3_credential(env)} cannot {what}")
        if (
            status is not None
            and (status >= 500 or status in (408, 429))
            or error.code in ("SlowDown", "InternalError")
        ):
            return Transient(f"{status} {error.code} from {host}")
        return Permanent(f"{status} {error.code}: {error.message}")
    if isinstance(error, ServerError):
        return Transient(f"{error.status_code} from {host}")
    if isinstance(error, InvalidResponseError):
        text = str(error)
        return Transient(f"an unexpected answer from {host}: {text[:200]}")
    if isinstance(error, urllib3.exceptions.MaxRetryError) and isinstance(error.reason, urllib3.exceptions.SSLError):
        return Permanent(f"TLS: {host} cannot be verified: {error.reason}")
    if isinstance(error, urllib3.exceptions.SSLError):
        return Permanent(f"TLS: {host} cannot be verified: {error}")
    if isinstance(error, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)):
        reason = getattr(error, "reason", None) or error
        return Transient(f"{type(reason).__name__} talking to {host}")
    return None


class S3Source:
    def __init__(self, entry: SourceEntry, env: Mapping[str, str]):
        self.entry = entry
        self.source = entry.source
        self.env = env
        self.bucket = self.source.repo
        self._client = None
        # Files whose ETag turned out not to be an md5 (encrypted objects): checked by size only.
        self._not_md5: set[str] = set()

    @property
    def client(self):
        if self._client is None:
            self._client = make_client(self.env)
        return self._client

    def needs_check(self, manifest_revision: str | None) -> bool:
        return False  # a complete copy of the URI is kept; objects are not versions

    def resolve(self) -> Remote:
        if self.source.kind.value == "s3-object":
            try:
                stat = self.client.stat_object(self.bucket, self.source.path)
            except Exception as error:
                # A HEAD answer has no body: a missing bucket also reads as a missing key.
                failure = self.classify(error)
                if (
                    isinstance(failure, Permanent)
                    and "NoSuchKey" in failure.problem
                    and not self.client.bucket_exists(self.bucket)
                ):
                    raise Permanent(
                        f"404 NoSuchBucket: bucket {self.bucket} does not exist at {endpoint_of(self.env)[0]}"
                    ) from None
                raise
            return Remote(None, (self._file(self.source.file_name(), self.source.path, stat.size, stat.etag),))
        files = []
        for obj in self.client.list_objects(self.bucket, prefix=self.source.path, recursive=True):
            if obj.is_dir or obj.object_name.endswith("/"):
                continue
            rel = obj.object_name[len(self.source.path) :]
            files.append(self._file(rel, obj.object_name, obj.size, obj.etag))
        if not files:
            raise Permanent(f"404 no objects under s3://{self.bucket}/{self.source.path}")
        return Remote(None, tuple(files))

    @staticmethod
    def _file(rel: str, key: str, size: int, etag: str | None) -> RemoteFile:
        md5 = plain_md5(etag)
        checksum = f"md5:{md5}" if md5 else (f"etag:{(etag or '').strip(chr(34))}" if etag else None)
        return RemoteFile(rel, size, checksum, key)

    def download(self, f: RemoteFile, partial: Path, revision: str | None, abort: threading.Event) -> None:
        offset = partial.stat().st_size if partial.exists() else 0
        if offset >= f.size:
            if offset > f.size:
                partial.unlink()
                raise Changed(f"{f.path}: the partial file is larger than the object")
            return
        expected = (f.checksum or "").partition(":")[2]
        response = self.client.get_object(self.bucket, f.ref, offset=offset)
        try:
            etag = (response.headers.get("ETag") or "").strip('"').lower()
            if expected and etag and etag != expected.lower():
                raise Changed(f"{f.path}: the object changed (ETag {etag}, listed {expected})")
            if not etag_is_md5(response.headers):
                self._not_md5.add(f.path)
            with open(partial, "ab") as raw:
                out = AbortableFile(raw, abort)
                for chunk in response.stream(CHUNK):
                    out.write(chunk)
        finally:
            response.close()
            response.release_conn()

    def expected(self, f: RemoteFile) -> RemoteFile:
        """What verification checks: the md5 only where the ETag is one."""
        if f.path in self._not_md5 and (f.checksum or "").startswith("md5:"):
            return RemoteFile(f.path, f.size, "etag:" + (f.checksum or "").partition(":")[2], f.ref)
        return f

    def classify(self, error: BaseException) -> TransferFailure | None:
        key = self.source.path if self.source.kind.value == "s3-object" else None
        return classify(error, self.env, f"read s3://{self.bucket}/{self.source.path}", bucket=self.bucket, key=key)
