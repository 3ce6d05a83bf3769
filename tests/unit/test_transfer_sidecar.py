"""The transfer sidecar against real local servers: a Hugging Face endpoint (huggingface_hub's
own download code talks to it), moto's S3 server and a TLS file server, each with a request
log. Runs ``python -m sft_trainer.transfer`` as the pod does; seconds per test."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path

import pytest
from transfer_helpers import Sidecar, source_entry, write_config

from devtools.hf_endpoint import HfEndpoint, publish
from devtools.https_files import HttpsFiles
from devtools.object_store import ObjectStore
from sft_core import contract, sources

HF_TOKEN = "hf_test_token_9f8e7d6c5b4a"
BIG = 6 * 1024 * 1024


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from devtools.tiny_model import make_messages, write_tiny_model

    corpus = [m["content"] for s in make_messages(8) for m in s["messages"]]
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model", corpus)


@pytest.fixture(scope="module")
def hf(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("hf")
    publish(
        root,
        "model",
        "org/tiny",
        {p.relative_to(tiny_model).as_posix(): p for p in tiny_model.rglob("*") if p.is_file()},
    )
    publish(root, "model", "org/private", {"config.json": b"{}"})
    publish(root, "dataset", "org/data", {"train.jsonl": b'{"messages": [{"role": "user", "content": "hi"}]}\n'})
    publish(root, "model", "org/big", {"config.json": b'{"a": 1}', "model.safetensors": os.urandom(BIG)})
    with HfEndpoint(root, tokens={HF_TOKEN: None}, private={"org/private"}) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def s3():
    with ObjectStore() as store:
        client = store.client()
        client.make_bucket("models")
        for key, size in (("tiny/config.json", 100), ("tiny/model.safetensors", 300_000), ("data/train.jsonl", 5000)):
            data = os.urandom(size)
            client.put_object("models", key, io.BytesIO(data), len(data))
        yield store


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    (root / "train.jsonl").write_bytes(os.urandom(200_000))
    with HttpsFiles(root, tmp_path_factory.mktemp("certs")) as server:
        yield server


@pytest.fixture
def env(hf, s3, web) -> dict[str, str]:
    return {
        "HF_ENDPOINT": hf.url,
        "HF_TOKEN": HF_TOKEN,
        contract.ENV_HF_TOKEN_SECRET: "hf-token",
        contract.ENV_S3_SECRET: "s3-creds",
        "REQUESTS_CA_BUNDLE": str(web.ca_path),
        **s3.env(),
    }


def _read_object(store: ObjectStore, key: str) -> bytes:
    response = store.client().get_object("models", key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def _local(tmp: Path, field: str, uri: str) -> Path:
    return Path(source_entry(field, uri, tmp / "cache")["localPath"])


def _run_to_done(tmp: Path, entries, env) -> dict:
    sidecar = Sidecar(tmp, write_config(tmp, entries), env)
    try:
        state = sidecar.wait_done(90)
        assert sidecar.terminate() == 0
        return state
    finally:
        sidecar.close()


def test_fetch_every_kind_byte_identical_then_cached(tmp_path, hf, s3, web, env, tiny_model):
    entries = [
        ("spec.modelPath", "hf://org/tiny"),
        ("spec.dataPath", "hf://datasets/org/data/train.jsonl"),
        ("spec.modelPath", "s3://models/tiny"),
        ("spec.dataPath", "s3://models/data/train.jsonl"),
        ("spec.dataPath", f"{web.url}/train.jsonl"),
    ]
    hf.clear_log(), s3.clear_log(), web.clear_log()
    state = _run_to_done(tmp_path, entries, env)
    assert [(d["state"], d["cached"]) for d in state["downloads"]] == [("Done", False)] * 5
    model = _local(tmp_path, *entries[0])
    want = sorted(p.relative_to(tiny_model).as_posix() for p in tiny_model.rglob("*") if p.is_file())
    assert sorted(p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()) == want
    for rel in want:
        assert (model / rel).read_bytes() == (tiny_model / rel).read_bytes()
    assert _local(tmp_path, *entries[1]).read_bytes() == hf.root.joinpath("datasets/org/data/train.jsonl").read_bytes()
    s3_model = _local(tmp_path, *entries[2])
    assert (s3_model / "model.safetensors").read_bytes() == _read_object(s3, "tiny/model.safetensors")
    assert (s3_model / "config.json").read_bytes() == _read_object(s3, "tiny/config.json")
    assert _local(tmp_path, *entries[3]).read_bytes() == _read_object(s3, "data/train.jsonl")
    assert _local(tmp_path, *entries[4]).read_bytes() == (web.root / "train.jsonl").read_bytes()
    manifest = sources.SourceManifest.model_validate_json(
        (_local(tmp_path, *entries[0]).parent / sources.SOURCE_MANIFEST_FILE).read_bytes()
    )
    assert manifest.uri == "hf://org/tiny" and manifest.revision == state["downloads"][0]["revision"]
    assert all(f.checksum.startswith(("sha256:", "git-sha1:")) for f in manifest.files)
    assert {f.path: f.checksum for f in manifest.files}["model.safetensors"] == "sha256:" + hashlib.sha256(
        (tiny_model / "model.safetensors").read_bytes()
    ).hexdigest()
    assert len(hf.file_downloads("model.safetensors")) == 1

    # A second job on the same cache: nothing downloaded; hf asks once per source for the revision.
    hf.clear_log(), s3.clear_log(), web.clear_log()
    second = tmp_path / "second"
    second.mkdir()
    (second / "cache").symlink_to(tmp_path / "cache")
    state = _run_to_done(second, entries, env)
    assert [(d["state"], d["cached"]) for d in state["downloads"]] == [("Done", True)] * 5
    assert [(r["method"], r["path"]) for r in hf.requests if not r["path"].startswith("/api/agent")] == [
        ("GET", "/api/models/org/tiny"),
        ("GET", "/api/datasets/org/data"),
    ]  # no revision: the default branch
    assert s3.requests == [] and web.requests == []


def test_a_moved_branch_is_fetched_again_only_what_changed(tmp_path, hf, env):
    publish(hf.root, "model", "org/moving", {"config.json": b'{"v": 1}', "a.bin": b"a" * 1000})
    entries = [("spec.modelPath", "hf://org/moving@main")]
    first = _run_to_done(tmp_path, entries, env)["downloads"][0]["revision"]
    publish(hf.root, "model", "org/moving", {"config.json": b'{"v": 2}'})
    hf.clear_log()
    state = _run_to_done(tmp_path, entries, env)
    assert state["downloads"][0]["revision"] != first and not state["downloads"][0]["cached"]
    assert [r["path"].rsplit("/", 1)[-1] for r in hf.requests if r["method"] == "GET" and "/resolve/" in r["path"]] == [
        "config.json"
    ]  # a.bin is the same blob: verified before, not fetched again
    assert _local(tmp_path, *entries[0]).joinpath("config.json").read_bytes() == b'{"v": 2}'


def _wait_partial(path_glob_root: Path, at_least: int, timeout: float = 30) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in path_glob_root.rglob("partial/*"):
            if path.is_file() and path.stat().st_size >= at_least:
                return path
        time.sleep(0.05)
    raise AssertionError(f"no partial file of {at_least} bytes under {path_glob_root}")


def test_killed_mid_download_resumes_with_range(tmp_path, hf, env):
    entries = [("spec.modelPath", "hf://org/big")]
    hf.clear_log()
    hf.throttle_bps = 2 * 1024 * 1024
    try:
        sidecar = Sidecar(tmp_path, write_config(tmp_path, entries), env)
        try:
            partial = _wait_partial(tmp_path / "cache", 1024 * 1024)
            sidecar.kill()  # SIGKILL: no chance to clean up, as when a node dies
        finally:
            sidecar.close()
        kept = partial.stat().st_size
        assert 0 < kept < BIG
        hf.throttle_bps = None
        state = _run_to_done(tmp_path, entries, env)
    finally:
        hf.throttle_bps = None
    assert state["downloads"][0]["bytesDone"] == BIG + len(b'{"a": 1}')
    gets = hf.file_downloads("model.safetensors")
    assert [g["range"] for g in gets] == [None, f"bytes={kept}-"]
    assert gets[1]["bytes"] == BIG - kept
    assert len(hf.file_downloads("config.json")) == 1  # finished before the kill: not fetched again
    assert (
        _local(tmp_path, *entries[0]).joinpath("model.safetensors").read_bytes()
        == hf.root.joinpath("models/org/big/model.safetensors").read_bytes()
    )


def test_s3_killed_mid_download_resumes_with_range(tmp_path, s3, env):
    data = os.urandom(BIG)
    s3.client().put_object("models", "big/w.bin", io.BytesIO(data), len(data))
    entries = [("spec.dataPath", "s3://models/big/w.bin")]
    s3.clear_log()
    s3.throttle_bps = 2 * 1024 * 1024
    try:
        sidecar = Sidecar(tmp_path, write_config(tmp_path, entries), env)
        try:
            partial = _wait_partial(tmp_path / "cache", 1024 * 1024)
            sidecar.kill()
        finally:
            sidecar.close()
        kept = partial.stat().st_size
        s3.throttle_bps = None
        _run_to_done(tmp_path, entries, env)
    finally:
        s3.throttle_bps = None
    gets = s3.object_downloads("models", "big/w.bin")
    assert [g["range"] for g in gets] == [None, f"bytes={kept}-"]
    assert _local(tmp_path, *entries[0]).read_bytes() == data


def _fails(tmp_path: Path, entries, env, expected: str) -> None:
    sidecar = Sidecar(tmp_path, write_config(tmp_path, entries), env)
    try:
        assert sidecar.wait_exit(60) == contract.EXIT_BAD_CONFIG, sidecar.output()[-3000:]
        assert sidecar.message() == expected
        failed = [d for d in sidecar.state()["downloads"] if d["state"] == "Failed"]
        assert [d["error"] for d in failed] == [expected]
    finally:
        sidecar.close()


def test_wrong_token_is_one_line_and_exit_2(tmp_path, env):
    _fails(
        tmp_path,
        [("spec.modelPath", "hf://org/private@main")],
        {**env, "HF_TOKEN": "hf_wrong_token_123"},
        "spec.modelPath (hf://org/private@main): 401 Unauthorized: the token in Secret hf-token cannot read "
        "org/private",
    )


def test_private_repo_without_a_token(tmp_path, env):
    env = {k: v for k, v in env.items() if k not in ("HF_TOKEN", contract.ENV_HF_TOKEN_SECRET)}
    _fails(
        tmp_path,
        [("spec.modelPath", "hf://org/private")],
        env,
        "spec.modelPath (hf://org/private): 401 Unauthorized: org/private does not exist or is private, and no "
        "token was given (spec names no Hugging Face token Secret)",
    )


def test_missing_repo_and_revision(tmp_path, env):
    _fails(
        tmp_path,
        [("spec.modelPath", "hf://org/nothing")],
        env,
        "spec.modelPath (hf://org/nothing): 404 Not Found: no model repo org/nothing, or the token in Secret "
        "hf-token cannot read it",
    )
    _fails(
        tmp_path / "rev",
        [("spec.modelPath", "hf://org/tiny@v9")],
        env,
        "spec.modelPath (hf://org/tiny@v9): 404 Not Found: org/tiny has no revision v9",
    )


def test_missing_key_bucket_and_file(tmp_path, env, web, s3):
    host = s3.url.split("//", 1)[1]
    _fails(
        tmp_path / "k",
        [("spec.dataPath", "s3://models/data/nope.jsonl")],
        env,
        "spec.dataPath (s3://models/data/nope.jsonl): 404 NoSuchKey: bucket models has no object data/nope.jsonl",
    )
    _fails(
        tmp_path / "b",
        [("spec.dataPath", "s3://no-such-bucket/train.jsonl")],
        env,
        f"spec.dataPath (s3://no-such-bucket/train.jsonl): 404 NoSuchBucket: bucket no-such-bucket does not "
        f"exist at {host}",
    )
    _fails(
        tmp_path / "p",
        [("spec.modelPath", "s3://no-such-bucket/m")],
        env,
        f"spec.modelPath (s3://no-such-bucket/m/): 404 NoSuchBucket: bucket no-such-bucket does not exist at {host}",
    )
    _fails(
        tmp_path / "e",
        [("spec.modelPath", "s3://models/empty")],
        env,
        "spec.modelPath (s3://models/empty/): 404 no objects under s3://models/empty/",
    )
    _fails(
        tmp_path / "h",
        [("spec.dataPath", f"{web.url}/missing.jsonl")],
        env,
        f"spec.dataPath ({web.url}/missing.jsonl): 404 Not Found: 127.0.0.1 has no /missing.jsonl",
    )


def test_transient_failures_are_retried(tmp_path, hf, s3, env):
    hf.fail_next(2, 503)
    s3.fail_next(1, 503)
    state = _run_to_done(
        tmp_path,
        [("spec.dataPath", "hf://datasets/org/data/train.jsonl"), ("spec.dataPath", "s3://models/data/train.jsonl")],
        env,
    )
    assert [d["state"] for d in state["downloads"]] == ["Done", "Done"]


def test_credentials_never_written_or_printed(tmp_path, hf, s3, env):
    secret_env = {
        **env,
        "HF_TOKEN": "hf_very_secret_token_abc",
        "AWS_SECRET_ACCESS_KEY": "s3-very-secret-key-xyz",
        "AWS_SESSION_TOKEN": "s3-session-token-secret-123",
    }
    hf.tokens["hf_very_secret_token_abc"] = None
    outputs = []
    for name, entries in (
        ("ok", [("spec.modelPath", "hf://org/private"), ("spec.dataPath", "s3://models/data/train.jsonl")]),
        ("bad", [("spec.dataPath", "s3://nobucket-x/k")]),
        ("denied", [("spec.modelPath", "hf://org/nothing-here")]),
    ):
        run_dir = tmp_path / name
        sidecar = Sidecar(run_dir, write_config(run_dir, entries), secret_env)
        try:
            if name == "ok":
                sidecar.wait_done(60)
                sidecar.terminate()
            else:
                sidecar.wait_exit(60)
            outputs += [sidecar.output(), sidecar.message(), json.dumps(sidecar.state())]
        finally:
            sidecar.close()
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.stat().st_size < 10 << 20]
    texts = outputs + [p.read_bytes().decode(errors="replace") for p in files]
    for secret in (
        "hf_very_secret_token_abc",
        "s3-very-secret-key-xyz",
        "s3-session-token-secret-123",
        secret_env["AWS_ACCESS_KEY_ID"],
    ):
        assert not [t[:200] for t in texts if secret in t], secret


def test_two_jobs_on_one_cache_fetch_once(tmp_path, hf, env):
    entries = [("spec.modelPath", "hf://org/big")]
    cache = tmp_path / "a" / "cache"
    cache.mkdir(parents=True)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "cache").symlink_to(cache)
    hf.clear_log()
    hf.throttle_bps = 8 * 1024 * 1024
    try:
        first = Sidecar(tmp_path / "a", write_config(tmp_path / "a", entries), env)
        _wait_partial(cache, 1)
        second = Sidecar(tmp_path / "b", write_config(tmp_path / "b", entries), env)
        try:
            states = [first.wait_done(60), second.wait_done(60)]
            assert first.terminate() == 0 and second.terminate() == 0
        finally:
            first.close()
            second.close()
    finally:
        hf.throttle_bps = None
    assert [s["downloads"][0]["cached"] for s in states] == [False, True]
    assert len(hf.file_downloads("model.safetensors")) == 1


def test_other_pods_idle_until_sigterm(tmp_path, env):
    config = write_config(tmp_path, [("spec.modelPath", "hf://org/tiny")])
    sidecar = Sidecar(tmp_path, config, env, pod="job-1")
    try:
        time.sleep(1.0)
        assert sidecar.proc.poll() is None
        assert sidecar.terminate() == 0
        assert not (tmp_path / "ckpt" / sources.TRANSFER_STATE_FILE).exists()
        assert not (tmp_path / "cache").exists()
    finally:
        sidecar.close()


def test_a_file_failing_verification_twice_is_permanent(tmp_path, hf, env):
    publish(hf.root, "model", "org/corrupt", {"config.json": b"{}", "model.safetensors": b"w" * 5000})
    sha = hashlib.sha256(b"w" * 5000).hexdigest()
    bad = hashlib.sha256(b"\x88" + b"w" * 4999).hexdigest()
    hf.clear_log()
    hf.corrupt.add("model.safetensors")
    try:
        _fails(
            tmp_path,
            [("spec.modelPath", "hf://org/corrupt")],
            env,
            f"spec.modelPath (hf://org/corrupt): verification failed twice: model.safetensors: sha256 {bad}, "
            f"the source says {sha}",
        )
    finally:
        hf.corrupt.discard("model.safetensors")
    assert [g["range"] for g in hf.file_downloads("model.safetensors")] == [None, None]
    entry = _local(tmp_path, "spec.modelPath", "hf://org/corrupt")
    assert not (entry / "model.safetensors").exists()  # never moved where the trainer reads
    assert not (entry.parent / sources.SOURCE_MANIFEST_FILE).exists()


def test_sigterm_mid_download_exits_0_and_keeps_the_partial_file(tmp_path, web, env):
    (web.root / "slow.bin").write_bytes(os.urandom(BIG))
    entries = [("spec.dataPath", f"{web.url}/slow.bin")]
    web.clear_log()
    web.throttle_bps = 2 * 1024 * 1024
    try:
        sidecar = Sidecar(tmp_path, write_config(tmp_path, entries), env)
        try:
            partial = _wait_partial(tmp_path / "cache", 1024 * 1024)
            started = time.monotonic()
            assert sidecar.terminate(timeout=10) == 0
            assert time.monotonic() - started < 5
            assert sidecar.message() == "stopped by SIGTERM; a restart resumes"
        finally:
            sidecar.close()
        kept = partial.stat().st_size
        state = json.loads((tmp_path / "ckpt" / sources.TRANSFER_STATE_FILE).read_text())
        assert state["downloads"][0]["state"] == "Downloading" and 0 < state["downloads"][0]["bytesDone"] <= kept
        web.throttle_bps = None
        _run_to_done(tmp_path, entries, env)
    finally:
        web.throttle_bps = None
    gets = web.downloads("/slow.bin")
    assert [g["range"] for g in gets] == [None, f"bytes={kept}-"]
    assert _local(tmp_path, *entries[0]).read_bytes() == (web.root / "slow.bin").read_bytes()


def test_a_file_that_changed_between_kill_and_restart_is_started_over(tmp_path, web, env):
    (web.root / "moving.bin").write_bytes(b"a" * BIG)
    entries = [("spec.dataPath", f"{web.url}/moving.bin")]
    web.clear_log()
    web.throttle_bps = 2 * 1024 * 1024
    try:
        sidecar = Sidecar(tmp_path, write_config(tmp_path, entries), env)
        try:
            _wait_partial(tmp_path / "cache", 1024 * 1024)
            sidecar.kill()
        finally:
            sidecar.close()
        (web.root / "moving.bin").write_bytes(b"b" * BIG)  # same size, another ETag
        web.throttle_bps = None
        _run_to_done(tmp_path, entries, env)
    finally:
        web.throttle_bps = None
    # Not the old start with the new rest (same size: only the ETag tells them apart).
    assert _local(tmp_path, *entries[0]).read_bytes() == b"b" * BIG
    assert [g["range"] for g in web.downloads("/moving.bin")] == [None, None]


def test_the_files_of_a_sharded_model_download_at_once(tmp_path, hf, env):
    shards = {f"model-0000{n}-of-00004.safetensors": os.urandom(1024 * 1024) for n in range(1, 5)}
    publish(hf.root, "model", "org/sharded", {"config.json": b"{}", **shards})
    hf.clear_log()
    hf.throttle_bps = 1024 * 1024  # per connection: one shard takes a second
    try:
        _run_to_done(tmp_path, [("spec.modelPath", "hf://org/sharded")], env)
    finally:
        hf.throttle_bps = None
    gets = [g for name in shards for g in hf.file_downloads(name)]
    assert len(gets) == 4
    # Each download started before any other ended: four streams at once, not one after another.
    assert max(g["t0"] for g in gets) < min(g["t"] for g in gets), gets
    model = _local(tmp_path, "spec.modelPath", "hf://org/sharded")
    assert {name: (model / name).read_bytes() for name in shards} == shards
