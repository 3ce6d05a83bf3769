"""The transfer sidecar's pure parts: config, the one line, backoff, redaction, verification,
the S3 endpoint, what is exportable."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sft_core import checkpoints, contract, sources
from sft_trainer.transfer import cache, config, export, outcome, s3


def _config(**overrides) -> dict:
    uri = "hf://org/x@main"
    raw = {
        "trainingArgs": {"ckpt_output_dir": "/checkpoints"},
        "sources": [
            {
                "field": "spec.modelPath",
                "uri": uri,
                "cacheKey": sources.parse_source(uri, model=True).cache_key,
                "localPath": "/checkpoints/.sft-sources/x/files",
            }
        ],
        "sourceCacheRoot": "/checkpoints/.sft-sources",
    }
    raw.update(overrides)
    return raw


def test_config_parses_sources_and_export():
    parsed = config.parse(_config(export={"uri": "s3://bucket/runs/a", "fullStates": True, "restore": True}))
    assert parsed.ckpt_dir == Path("/checkpoints")
    assert parsed.cache_root == Path("/checkpoints/.sft-sources")
    assert [(e.field, e.uri) for e in parsed.sources] == [("spec.modelPath", "hf://org/x@main")]
    assert parsed.export == config.ExportConfig("s3://bucket/runs/a", "bucket", "runs/a", True, True)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"trainingArgs": {}}, "trainingArgs.ckpt_output_dir: an absolute path is required"),
        ({"sourceCacheRoot": None}, "sourceCacheRoot: an absolute path is required with sources"),
        ({"sources": {"a": 1}}, "sources: must be a list"),
        (
            {"sources": [{"field": "spec.modelPath", "uri": "hf://org/x", "cacheKey": "other", "localPath": "/x"}]},
            "sources[0].cacheKey: 'other' is not hf://org/x's (org-x-"
            + hashlib.sha256(b"hf://org/x").hexdigest()[:12]
            + ")",
        ),
        (
            {"sources": [{"field": "spec.dataPath", "uri": "ftp://h/x", "cacheKey": "k", "localPath": "/x"}]},
            "spec.dataPath: 'ftp://h/x': scheme ftp:// is not supported (hf://, s3://, https:// or an absolute path)",
        ),
        (
            {"sources": [{"field": "spec.dataPath", "uri": "s3://b/k"}]},
            "sources[0].cacheKey: a non-empty string is required",
        ),
        ({"export": {"uri": "gs://b"}}, "export.uri: 'gs://b': the export target is s3://<bucket>[/<prefix>]"),
    ],
)
def test_config_problems_name_the_key(overrides, message):
    with pytest.raises(config.ConfigProblem) as raised:
        config.parse(_config(**overrides))
    assert str(raised.value) == message


def test_one_line_and_retry_schedule():
    assert outcome.line(
        "spec.modelPath", "hf://org/x@main", "401 Unauthorized: the token in Secret hf-token cannot read org/x"
    ) == ("spec.modelPath (hf://org/x@main): 401 Unauthorized: the token in Secret hf-token cannot read org/x")
    assert [outcome.backoff_seconds(n) for n in range(1, 8)] == [2, 4, 8, 16, 32, 60, 60]
    assert outcome.retry_note("x: 503 from h", 2, 4.0) == "x: 503 from h (attempt 2 of 5; retrying in 4s)"


def test_credentials_are_named_never_shown():
    assert outcome.hf_credential({}) == "no token was given (spec names no Hugging Face token Secret)"
    assert (
        outcome.hf_credential({"HF_TOKEN": "hf_abcdefgh", contract.ENV_HF_TOKEN_SECRET: "hf-token"})
        == "the token in Secret hf-token"
    )
    assert outcome.hf_credential({"HF_TOKEN": "hf_abcdefgh"}) == "the token given"
    assert (
        outcome.s3_credential({"AWS_ACCESS_KEY_ID": "AKIA1234", contract.ENV_S3_SECRET: "s3"})
        == "the credentials in Secret s3"
    )
    assert outcome.s3_credential({}) == "no credentials were given (spec names no S3 Secret)"
    env = {"HF_TOKEN": "hf_secret_token_1", "AWS_SECRET_ACCESS_KEY": "abc", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE12"}
    secrets = outcome.secret_values(env)
    assert secrets == ["hf_secret_token_1", "AKIAEXAMPLE12"]  # longest first; 3 characters are no key
    assert outcome.redact("token hf_secret_token_1 key AKIAEXAMPLE12", secrets) == "token *** key ***"


def test_verify_size_sha256_git_sha1_md5(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"hello\n")
    sha256 = hashlib.sha256(b"hello\n").hexdigest()
    md5 = hashlib.md5(b"hello\n").hexdigest()
    git = "ce013625030ba8dba906f756967f9e9ca394464a"  # git hash-object of b"hello\n"
    for checksum in (f"sha256:{sha256}", f"git-sha1:{git}", f"md5:{md5}", "etag:opaque", None):
        assert cache.verify(path, cache.RemoteFile("f", 6, checksum)) is None
    assert cache.verify(path, cache.RemoteFile("f", 7, None)) == "f: 6 bytes, the source says 7"
    assert (
        cache.verify(path, cache.RemoteFile("f", 6, "sha256:" + "0" * 64))
        == f"f: sha256 {sha256}, the source says {'0' * 64}"
    )
    assert (
        cache.verify(path, cache.RemoteFile("f", 6, "git-sha1:" + "1" * 40))
        == f"f: git-sha1 {git}, the source says {'1' * 40}"
    )


def test_s3_endpoint_and_md5_etags():
    assert s3.endpoint_of({}) == ("s3.us-east-1.amazonaws.com", True, "us-east-1")
    assert s3.endpoint_of({"AWS_REGION": "eu-west-1"}) == ("s3.eu-west-1.amazonaws.com", True, "eu-west-1")
    assert s3.endpoint_of({"AWS_ENDPOINT_URL": "http://10.0.0.5:9000"}) == ("10.0.0.5:9000", False, "us-east-1")
    assert s3.endpoint_of({"AWS_ENDPOINT_URL": "minio.example:9000"}) == ("minio.example:9000", True, "us-east-1")
    assert s3.plain_md5('"9A0364B9E99BB480DD25E1F0284C8555"') == "9a0364b9e99bb480dd25e1f0284c8555"
    assert s3.plain_md5('"9a0364b9e99bb480dd25e1f0284c8555-3"') is None  # multipart: not an md5
    assert s3.plain_md5(None) is None
    assert s3.etag_is_md5({"ETag": '"9a0364b9e99bb480dd25e1f0284c8555"'})
    assert s3.etag_is_md5({"x-amz-server-side-encryption": "AES256"})
    assert not s3.etag_is_md5({"X-Amz-Server-Side-Encryption": "aws:kms"})
    assert not s3.etag_is_md5({"x-amz-server-side-encryption-customer-algorithm": "AES256"})


def _hf(root: Path, name: str, *, weights: bool = True) -> None:
    path = root / checkpoints.HF_FORMAT_DIR / name
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    if weights:
        (path / "model.safetensors").write_bytes(b"w")


def test_exportable_only_complete_quiet_checkpoints(tmp_path):
    _hf(tmp_path, "samples_8")
    _hf(tmp_path, "samples_16")
    _hf(tmp_path, "samples_24", weights=False)  # being written: no weights yet
    _hf(tmp_path, "samples_32")  # weights written a moment ago
    _hf(tmp_path, "last_epoch")  # rewritten every epoch: only once training completed
    tree = checkpoints.scan_checkpoints(tmp_path)
    newest = {"hf_format/samples_32": 995.0}
    todo = export.exportable(
        tree,
        {"hf_format/samples_8"},
        full_states=False,
        now=1000.0,
        newest=lambda rel: newest.get(rel, 900.0),
        ready=lambda rel: True,
    )
    assert todo == ["hf_format/samples_16"]
    assert export.exportable(
        tree,
        set(),
        full_states=False,
        now=1000.0,
        newest=lambda rel: 900.0,
        ready=lambda rel: rel != "hf_format/samples_16",
    ) == ["hf_format/samples_8", "hf_format/samples_32"]


def test_shards_present(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}'
    )
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"1")
    assert not export.shards_present(tmp_path)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"2")
    assert export.shards_present(tmp_path)


def test_remote_key():
    assert export.remote_key("runs/a", "hf_format/samples_8", "config.json") == "runs/a/hf_format/samples_8/config.json"
    assert export.remote_key("", "hf_format/samples_8") == "hf_format/samples_8"
