"""Data in, model out, on the REAL node (the e2e modules' shared stack, tests/e2e/conftest.py):
a model from a local Hugging Face endpoint (hf://, huggingface_hub's own download code) and data from a local S3
server (moto behind a logging proxy), both started here and reached by the pods at this machine's
address; the final checkpoint exported to S3.

- a 2-node job fetches each file ONCE (the servers' request logs), not once per pod, trains to
  Succeeded only after its final checkpoint is exported, and lists the export in its status; the
  exported objects are byte-identical to the claim's files; a second job on the same claim with
  the same sources downloads nothing;
- the pod fetching is deleted mid-download: its replacement fetches only what was missing;
- a wrong token, a missing key and a missing bucket end Failed within 60 s with one line naming
  the field and the source, no trainer having started;
- no credential appears in any object, Event, status, log line or file the job wrote.

What this proves and does not: docs/data.md ("What the tests prove").
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from realnode_harness import JOB_NS, Jobs, SharedStack, condition

from devtools.hf_endpoint import HfEndpoint, publish
from devtools.node import host_ip
from devtools.object_store import ACCESS_KEY, SECRET_KEY, ObjectStore
from devtools.stack import wait_until
from devtools.tiny_model import build_tiny_assets
from sft_core import contract
from sft_core.sources import TRANSFER_STATE_FILE
from sft_models.models import parse_job
from sft_models.naming import claim_name

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

HF_REPO = "sft-test/tiny-llama"
HF_TOKEN = "hf_e2e_token_9f3c1a7b5d"  # the endpoint knows it; it must appear nowhere else
DATA_BUCKET, DATA_KEY = "sft-data", "tiny/train.jsonl"
EXPORT_BUCKET = "sft-exports"
HF_SECRET, S3_SECRET = "hf-token", "s3-creds"


class Servers:
    """The local hub and object store, and the spec.remote that points the pods at them."""

    def __init__(self, hub: HfEndpoint, store: ObjectStore, ip: str, model_files: dict[str, bytes]):
        self.hub, self.store, self.ip, self.model_files = hub, store, ip, model_files

    def remote(self) -> dict[str, Any]:
        hub_port = self.hub._server.server_address[1]
        store_port = self.store._server.server_address[1]
        return {
            "huggingFace": {"tokenSecret": HF_SECRET, "endpoint": f"http://{self.ip}:{hub_port}"},
            "s3": {"credentialsSecret": S3_SECRET, "endpoint": f"http://{self.ip}:{store_port}", "region": "us-east-1"},
        }

    def model_downloads(self) -> dict[str, int]:
        return {name: len(self.hub.file_downloads(name)) for name in self.model_files}

    def data_downloads(self) -> int:
        return len(self.store.object_downloads(DATA_BUCKET, DATA_KEY))


@pytest.fixture(scope="module")
def servers(shared_stack: SharedStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    jobs = shared_stack.jobs()
    assets = build_tiny_assets(tmp_path_factory.mktemp("hub-assets"))
    root = tmp_path_factory.mktemp("hub")
    model_files = {p.name: p.read_bytes() for p in sorted(assets.model_dir.iterdir()) if p.is_file()}
    publish(root, "model", HF_REPO, model_files)
    ip = host_ip()
    # Bound to every address: the pods reach both at this machine's IP.
    hub = HfEndpoint(root, host="0.0.0.0", tokens={HF_TOKEN: None}, private={HF_REPO}, throttle_bps=None).start()
    store = ObjectStore(host="0.0.0.0").start()
    client = store.client()
    for bucket in (DATA_BUCKET, EXPORT_BUCKET):
        client.make_bucket(bucket)
    data = assets.data_path.read_bytes()
    import io

    client.put_object(DATA_BUCKET, DATA_KEY, io.BytesIO(data), len(data))
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque"}
    jobs.core.create_namespaced_secret(
        JOB_NS, {**secret, "metadata": {"name": HF_SECRET}, "stringData": {"HF_TOKEN": HF_TOKEN}}
    )
    jobs.core.create_namespaced_secret(
        JOB_NS,
        {
            **secret,
            "metadata": {"name": S3_SECRET},
            "stringData": {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY},
        },
    )
    try:
        yield Servers(hub, store, ip, model_files)
    finally:
        hub.stop()
        store.stop()
        for name in (HF_SECRET, S3_SECRET):  # the namespace is the session's: left as found
            try:
                jobs.core.delete_namespaced_secret(name, JOB_NS)
            except ApiException as e:
                if e.status != 404:
                    raise


def remote_job(jobs: Jobs, servers: Servers, name: str, **spec: Any) -> dict[str, Any]:
    fields = {"modelPath": f"hf://{HF_REPO}", "dataPath": f"s3://{DATA_BUCKET}/{DATA_KEY}", "remote": servers.remote()}
    return jobs.manifest(name, **{**fields, **spec})


def all_text_the_cluster_shows(jobs: Jobs) -> str:
    """Every object of the namespace but its Secrets, the operator's objects, and every log."""
    stack = jobs.stack
    kinds = (
        "sftjobs,statefulsets,pods,configmaps,services,events,persistentvolumeclaims,networkpolicies,"
        "serviceaccounts,roles,rolebindings"
    )
    parts = [
        stack.kubectl("-n", JOB_NS, "get", kinds, "-o", "yaml", timeout=120).stdout,
        stack.kubectl("get", "persistentvolumes", "-o", "yaml").stdout,
        stack.operator_log(tail=5000),
    ]
    for pod in jobs.core.list_namespaced_pod(JOB_NS).items:
        for container in pod.spec.containers:
            parts.append(stack.kubectl("-n", JOB_NS, "logs", pod.metadata.name, "-c", container.name).stdout)
            parts.append(
                stack.kubectl("-n", JOB_NS, "logs", pod.metadata.name, "-c", container.name, "--previous").stdout
            )
    return "\n".join(parts)


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_two_node_job_fetches_each_file_once_trains_exports_and_a_second_job_fetches_nothing(
    jobs: Jobs, servers: Servers
) -> None:
    manifest = remote_job(jobs, servers, "fetch-once", export={"uri": f"s3://{EXPORT_BUCKET}/fetch-once"})
    jobs.create(manifest)
    seen_downloading = []

    def downloading() -> bool:
        progress = jobs.progress("fetch-once")
        if progress.get("downloads"):
            seen_downloading.append(progress["downloads"])
        return bool(progress.get("downloads"))

    wait_until("the status lists the downloads", downloading, timeout_s=300, interval_s=1)
    job = jobs.follow("fetch-once")
    status = job["status"]
    assert status["phase"] == "Succeeded", status
    # One download of each file per job, not per pod (2 pods).
    assert servers.model_downloads() == {name: 1 for name in servers.model_files}
    assert servers.data_downloads() == 1
    downloads = status["progress"]["downloads"]
    assert [(d["field"], d["source"], d["state"], d.get("cached", False)) for d in downloads] == [
        ("spec.modelPath", f"hf://{HF_REPO}", "Done", False),
        ("spec.dataPath", f"s3://{DATA_BUCKET}/{DATA_KEY}", "Done", False),
    ]
    assert downloads[0]["bytesDone"] == downloads[0]["bytesTotal"] == sum(len(b) for b in servers.model_files.values())
    assert downloads[0]["revision"]  # the commit fetched
    # The final checkpoint is exported, listed, and byte-identical to the claim's.
    final = status["progress"]["latestCheckpoint"]
    exports = status["progress"]["exports"]
    assert exports[-1]["checkpoint"] == f"hf_format/{final}"
    assert exports[-1]["uri"] == f"s3://{EXPORT_BUCKET}/fetch-once/hf_format/{final}"
    assert condition(status, "Exported")["status"] == "True"
    claim_root = jobs.claim_dir(job)
    local = files_under(claim_root / "hf_format" / final)
    client = servers.store.client()
    prefix = f"fetch-once/hf_format/{final}/"
    remote = {
        o.object_name[len(prefix) :]: client.get_object(EXPORT_BUCKET, o.object_name).read()
        for o in client.list_objects(EXPORT_BUCKET, prefix=prefix, recursive=True)
    }
    marker = remote.pop(".sft-export-complete.json")
    assert json.loads(marker)  # written last: the prefix is complete
    assert remote == local
    # The fetched copy is on the claim, outside the job's directory: the cache.
    cache = claim_root / contract.SOURCE_CACHE_DIR
    assert cache.is_dir() and any(cache.iterdir())

    # Nothing secret anywhere the cluster shows, nor in what the job wrote on its volume.
    shown = all_text_the_cluster_shows(jobs)
    on_volume = b"".join(p.read_bytes() for p in claim_root.rglob("*") if p.is_file() and p.stat().st_size < 10 << 20)
    for secret_value in (HF_TOKEN, SECRET_KEY, ACCESS_KEY):
        assert secret_value not in shown
        assert secret_value.encode() not in on_volume
    # ... but the Secret's own object, base64-encoded, is where it belongs.
    stored = jobs.core.read_namespaced_secret(HF_SECRET, JOB_NS).data["HF_TOKEN"]
    assert base64.b64decode(stored).decode() == HF_TOKEN

    # A second job on the same claim (another directory), same sources: nothing downloaded again.
    before_model, before_data = servers.model_downloads(), servers.data_downloads()
    claim = claim_name(parse_job(job))
    second = remote_job(  # one node: what it fetches is the question, not how many ranks train
        jobs, servers, "fetch-again", nnodes=1, numEpochs=1, checkpoints={"existingClaim": claim, "path": "again"}
    )
    jobs.create(second)
    done = jobs.follow("fetch-again")
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert servers.model_downloads() == before_model and servers.data_downloads() == before_data
    assert [d.get("cached") for d in done["status"]["progress"]["downloads"]] == [True, True]


def test_the_fetching_pod_deleted_mid_download_resumes_with_only_what_was_missing(
    jobs: Jobs, servers: Servers, tmp_path: Path
) -> None:
    # A model of its own (a fresh cache entry) with one big file, served slowly.
    big = hashlib.sha256(b"seed").digest() * (16 * 1024 * 1024 // 32)  # 16 MiB
    files = {**servers.model_files, "extra.bin": big}
    publish(servers.hub.root, "model", "sft-test/slow-model", files)
    servers.hub.throttle_bps = 1 << 20  # 1 MiB/s: about 16 s for the big file
    try:
        jobs.create(
            remote_job(jobs, servers, "fetch-resume", nnodes=1, numEpochs=1, modelPath="hf://sft-test/slow-model")
        )

        claim_root = jobs.claim_dir(jobs.job("fetch-resume"))

        def partly_fetched() -> bool:
            # The sidecar's own report on the volume (the status publishes bytes at most every 15 s).
            try:
                report = json.loads((claim_root / TRANSFER_STATE_FILE).read_text())
            except (OSError, ValueError):
                return False
            model = next((d for d in report.get("downloads", []) if d["field"] == "spec.modelPath"), None)
            return bool(model and 4 << 20 <= model.get("bytesDone", 0) < (model.get("bytesTotal") or 0) - (4 << 20))

        wait_until("the model partly fetched", partly_fetched, timeout_s=300, interval_s=0.5)
        jobs.core.delete_namespaced_pod("fetch-resume-0", JOB_NS, grace_period_seconds=0)
        wait_until(
            "the model fetched",
            lambda: any(
                d["field"] == "spec.modelPath" and d["state"] == "Done"
                for d in jobs.progress("fetch-resume").get("downloads") or []
            ),
            timeout_s=300,
            interval_s=1,
        )
    finally:
        servers.hub.throttle_bps = None
    sent = [r.get("bytes", 0) for r in servers.hub.file_downloads("extra.bin")]
    assert len(sent) >= 2, sent  # the cut one and the resumed one
    # Fetched once in all: the second request asked only for the rest (Range).
    assert sum(sent) <= len(big) + (1 << 20), sent
    job = jobs.follow("fetch-resume")
    assert job["status"]["phase"] == "Succeeded", job["status"]


@pytest.mark.parametrize(
    ("case", "spec", "line"),
    [
        (
            "wrong-token",
            {"remote_token": "hf_not_the_token"},
            f"spec.modelPath (hf://{HF_REPO}): 401 Unauthorized: the token in Secret bad-hf-token cannot read {HF_REPO}",
        ),
        (
            "missing-key",
            {"dataPath": f"s3://{DATA_BUCKET}/tiny/nothing-here.jsonl"},
            f"spec.dataPath (s3://{DATA_BUCKET}/tiny/nothing-here.jsonl): ",
        ),
        (
            "missing-bucket",
            {"dataPath": "s3://no-such-bucket/train.jsonl"},
            "spec.dataPath (s3://no-such-bucket/train.jsonl): ",
        ),
    ],
)
def test_a_source_that_cannot_be_fetched_fails_the_job_within_60s_naming_field_and_source(
    jobs: Jobs, servers: Servers, case: str, spec: dict[str, Any], line: str, request: pytest.FixtureRequest
) -> None:
    name = f"fetch-{case}"
    token = spec.pop("remote_token", None)
    manifest = remote_job(jobs, servers, name, nnodes=1, **spec)
    manifest["spec"]["pod"]["resources"] = {"requests": {"cpu": "100m", "memory": "512Mi"}}
    if token is not None:
        jobs.core.create_namespaced_secret(
            JOB_NS, {"metadata": {"name": "bad-hf-token"}, "stringData": {"HF_TOKEN": token}}
        )
        request.addfinalizer(lambda: jobs.core.delete_namespaced_secret("bad-hf-token", JOB_NS))
        manifest["spec"]["remote"]["huggingFace"]["tokenSecret"] = "bad-hf-token"
    created = time.monotonic()
    jobs.create(manifest)
    job = jobs.follow(name, timeout_s=180)
    took = time.monotonic() - created
    status = job["status"]
    failed = condition(status, "Failed")
    assert (status["phase"], failed["reason"]) == ("Failed", "DownloadFailed"), status
    assert failed["message"].startswith(line) and "\n" not in failed["message"], failed["message"]
    assert took < 60, f"{took:.0f}s"
    # No training started: the launcher never got past its wait for the sources.
    claim_root = jobs.claim_dir(job)
    assert not (claim_root / "sft-operator" / "runs.jsonl").exists()
    if token is not None:
        assert token not in all_text_the_cluster_shows(jobs)
