"""Remote sources, fetched once: bytes taken from the source per job for nnodes 1, 2 and 4 (must
stay 1x the model), and the time from `apply` to the first training step with a cold and a
warm source cache.

    PYTHONPATH=. .venv/bin/python benchmarks/data_fetch.py [--nnodes 1 2 4] [--weights-mb 64]

On the real node (devtools.realstack; root), a local Hugging Face endpoint and a local S3 server
(devtools.hf_endpoint, devtools.object_store) at this machine's address. The model is the tiny
model plus a weights-sized extra file (``--weights-mb``), so the byte counts mean something. For
each nnodes: a cold job on a fresh claim (its cache empty), then a warm job on the same claim
(another directory: the cache is the volume's). Each job is deleted at its first step. Prints one
line per job and a table.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from devtools.hf_endpoint import HfEndpoint, publish
from devtools.node import host_ip
from devtools.object_store import ACCESS_KEY, SECRET_KEY, ObjectStore
from devtools.realstack import RealStack
from devtools.stack import wait_until
from devtools.tiny_model import build_tiny_assets
from sft_core import contract

NAMESPACE = "data-fetch"
REPO = "bench/tiny-llama"
BUCKET, KEY = "bench-data", "train.jsonl"
POD_CPU = "200m"


def served_bytes(requests: list[dict[str, Any]], marker: str) -> int:
    return sum(
        int(r.get("bytes") or 0)
        for r in requests
        if r["method"] == "GET" and marker in r["path"] and r["status"] in (200, 206)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nnodes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--weights-mb", type=int, default=64)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (the real node)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="data-fetch-"))
    assets = build_tiny_assets(work / "assets")
    files: dict[str, bytes | Path] = {p.name: p for p in assets.model_dir.iterdir() if p.is_file()}
    files["extra-weights.bin"] = os.urandom(args.weights_mb << 20)
    publish(work / "hub", "model", REPO, files)
    model_bytes = sum(p.stat().st_size for p in (work / "hub" / "models" / REPO).rglob("*") if p.is_file())

    started = time.monotonic()
    stack = RealStack(work / "stack", on_step=lambda msg: print(f"realstack: {msg}", flush=True)).start()
    print(f"stack up in {time.monotonic() - started:.0f}s", flush=True)
    ip = host_ip()
    hub = HfEndpoint(work / "hub", host="0.0.0.0").start()
    store = ObjectStore(host="0.0.0.0").start()
    rows: list[tuple[int, str, int, int, float]] = []
    try:
        client = store.client()
        client.make_bucket(BUCKET)
        data = assets.data_path.read_bytes()
        client.put_object(BUCKET, KEY, io.BytesIO(data), len(data))
        api = stack.api_client()
        core, custom = kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        assert stack.cp is not None
        stack.cp.wait_for_default_service_account(NAMESPACE)
        core.create_namespaced_secret(
            NAMESPACE,
            {
                "metadata": {"name": "s3-creds"},
                "stringData": {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY},
            },
        )
        remote = {
            "huggingFace": {"endpoint": f"http://{ip}:{hub._server.server_address[1]}"},
            "s3": {
                "credentialsSecret": "s3-creds",
                "endpoint": f"http://{ip}:{store._server.server_address[1]}",
                "region": "us-east-1",
            },
        }

        def run(name: str, nnodes: int, checkpoints: dict[str, Any]) -> tuple[int, int, float]:
            hub_before, store_before = len(hub.requests), len(store.requests)
            body = stack.job_manifest(name, NAMESPACE, cpu=POD_CPU)
            body["spec"].update(
                modelPath=f"hf://{REPO}",
                dataPath=f"s3://{BUCKET}/{KEY}",
                remote=remote,
                nnodes=nnodes,
                numEpochs=1,
                effectiveBatchSize=max(4, nnodes),
                checkpoints=checkpoints,
            )
            body["spec"]["pod"].pop("volumes", None)
            body["spec"]["pod"].pop("volumeMounts", None)
            applied = time.monotonic()
            custom.create_namespaced_custom_object(contract.GROUP, contract.VERSION, NAMESPACE, contract.PLURAL, body)

            def first_step() -> bool:
                job = custom.get_namespaced_custom_object(
                    contract.GROUP, contract.VERSION, NAMESPACE, contract.PLURAL, name
                )
                progress = (job.get("status") or {}).get("progress") or {}
                if (job.get("status") or {}).get("phase") == "Failed":
                    raise RuntimeError(f"{name} failed: {job['status']}")
                return int(progress.get("samplesSeen") or 0) > 0

            wait_until(f"{name}'s first step", first_step, timeout_s=1200, interval_s=1)
            took = time.monotonic() - applied
            fetched = served_bytes(hub.requests[hub_before:], "/resolve/")
            fetched_data = served_bytes(store.requests[store_before:], f"/{BUCKET}/{KEY}")
            custom.delete_namespaced_custom_object(contract.GROUP, contract.VERSION, NAMESPACE, contract.PLURAL, name)
            print(
                f"{name}: nnodes {nnodes}: {fetched} model bytes + {fetched_data} data bytes from the sources, "
                f"first step {took:.1f}s after apply",
                flush=True,
            )
            return fetched, fetched_data, took

        for nnodes in args.nnodes:
            claim = f"cache-{nnodes}"
            core.create_namespaced_persistent_volume_claim(
                NAMESPACE,
                {
                    "metadata": {"name": claim},
                    "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "4Gi"}}},
                },
            )
            for temperature in ("cold", "warm"):
                fetched, fetched_data, took = run(
                    f"fetch-{nnodes}-{temperature}", nnodes, {"existingClaim": claim, "path": temperature}
                )
                rows.append((nnodes, temperature, fetched, fetched_data, took))
            wait_until(
                "the jobs' pods gone",
                lambda: not core.list_namespaced_pod(NAMESPACE).items,
                timeout_s=300,
                interval_s=2,
            )
            try:
                core.delete_namespaced_persistent_volume_claim(claim, NAMESPACE)
            except ApiException:
                pass
    finally:
        hub.stop()
        store.stop()
        stack.stop()
    print(f"\nmodel: {model_bytes} bytes ({args.weights_mb} MiB of extra weights); data: {len(data)} bytes")
    print(
        f"{'nnodes':>6}  {'cache':<5}  {'model bytes fetched':>20}  {'x model':>7}  {'data bytes':>10}  "
        f"{'apply -> first step':>19}"
    )
    for nnodes, temperature, fetched, fetched_data, took in rows:
        print(
            f"{nnodes:>6}  {temperature:<5}  {fetched:>20}  {fetched / model_bytes:>7.2f}  {fetched_data:>10}  "
            f"{took:>18.1f}s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
