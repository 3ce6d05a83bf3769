"""Reconcile benchmark: time from creating an SFTJob to its StatefulSet existing, and the API
requests the operator makes per job, for 1 and 100 jobs, on the real local control plane.

    PYTHONPATH=. .venv/bin/python benchmarks/reconcile.py [--jobs 1 100] [--nnodes 2]

Latency: a watch on StatefulSets timestamps each ADDED event as it arrives; the job's create
call is timestamped when it returns. Requests: the apiserver's apiserver_request_total, counting
only JSON requests (the operator's; the built-in controllers speak protobuf), minus the
benchmark's own create calls, from the first create until every job's status is written and
the operator has been quiet for a while.
"""

from __future__ import annotations

import argparse
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes

from devtools.controlplane import ControlPlane
from devtools.crd import CRD_NAME, build_crd
from devtools.tiny_model import tiny_job_spec
from sft_core import contract

QUIET_S = 3.0
_LABELS = re.compile(r'(\w+)="([^"]*)"')


def json_requests(cp: ControlPlane) -> Counter[tuple[str, str, str]]:
    """(verb, resource, subresource) -> count of JSON requests served so far."""
    _, body = cp.get("/metrics")
    counts: Counter[tuple[str, str, str]] = Counter()
    for line in body.decode().splitlines():
        if line.startswith("apiserver_request_total{"):
            labels = dict(_LABELS.findall(line))
            if labels.get("contentType", "").startswith("application/json") and labels.get("resource"):
                key = (labels["verb"], labels["resource"], labels.get("subresource", ""))
                counts[key] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def job_body(name: str, nnodes: int) -> dict[str, Any]:
    return {
        "apiVersion": contract.API_VERSION,
        "kind": contract.KIND,
        "metadata": {"name": name},
        "spec": tiny_job_spec(nnodes=nnodes),
    }


def install_crd(api: kubernetes.client.ApiClient) -> None:
    ext = kubernetes.client.ApiextensionsV1Api(api)
    ext.create_custom_resource_definition(build_crd())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        conditions = ext.read_custom_resource_definition(CRD_NAME).status.conditions or []
        if any(c.type == "Established" and c.status == "True" for c in conditions):
            return
        time.sleep(0.1)
    raise RuntimeError("CRD not established")


def start_operator(cp: ControlPlane, log: Path) -> subprocess.Popen[bytes]:
    port = 18080 + (int(time.time()) % 1000)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sft_operator",
            "run",
            "--kubeconfig",
            str(cp.kubeconfig),
            "--liveness",
            f"http://127.0.0.1:{port}/healthz",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                time.sleep(1.0)  # let the first watches open
                return proc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"operator did not start; see {log}")


def watch_statefulsets(
    api: kubernetes.client.ApiClient, namespace: str, seen: dict[str, float], stop: threading.Event
) -> None:
    apps = kubernetes.client.AppsV1Api(api)
    while not stop.is_set():
        stream = kubernetes.watch.Watch()
        for event in stream.stream(apps.list_namespaced_stateful_set, namespace, timeout_seconds=5):
            if event["type"] == "ADDED":
                seen.setdefault(event["object"].metadata.name, time.monotonic())
            if stop.is_set():
                stream.stop()
                break


def run_batch(cp: ControlPlane, api: kubernetes.client.ApiClient, count: int, nnodes: int) -> dict[str, Any]:
    namespace = f"bench-{count}"
    core = kubernetes.client.CoreV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)
    core.create_namespace({"metadata": {"name": namespace}})
    cp.wait_for_default_service_account(namespace)
    seen: dict[str, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch_statefulsets, args=(api, namespace, seen, stop), daemon=True)
    watcher.start()
    time.sleep(0.5)
    before = json_requests(cp)
    created: dict[str, float] = {}
    started = time.monotonic()
    for i in range(count):
        name = f"job-{i:03d}"
        custom.create_namespaced_custom_object(
            contract.GROUP, contract.VERSION, namespace, contract.PLURAL, job_body(name, nnodes)
        )
        created[name] = time.monotonic()
    while len(seen) < count and time.monotonic() - started < 300:
        time.sleep(0.05)
    all_created_s = time.monotonic() - started

    def statuses_written() -> int:
        items = custom.list_namespaced_custom_object(contract.GROUP, contract.VERSION, namespace, contract.PLURAL)[
            "items"
        ]
        return sum(1 for item in items if (item.get("status") or {}).get("phase"))

    while statuses_written() < count and time.monotonic() - started < 300:
        time.sleep(0.2)
    # Quiet: no new operator requests for QUIET_S (pods appearing still cause status writes).
    last, last_change = json_requests(cp), time.monotonic()
    while time.monotonic() - last_change < QUIET_S and time.monotonic() - started < 300:
        time.sleep(0.5)
        now = json_requests(cp)
        if now != last:
            last, last_change = now, time.monotonic()
    stop.set()
    # The benchmark's own requests: its creates, its status polls, its watch, its metrics reads.
    delta = last - before
    own = Counter({("POST", contract.PLURAL, ""): count})
    operator = {k: v for k, v in (delta - own).items() if k[0] not in ("LIST", "WATCH") or k[1] != "statefulsets"}
    operator = {k: v for k, v in operator.items() if not (k[0] == "LIST" and k[1] == contract.PLURAL)}
    latencies = sorted(seen[name] - created[name] for name in created if name in seen)
    total = sum(operator.values())
    return {
        "jobs": count,
        "created": len(seen),
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[int(0.95 * (len(latencies) - 1))],
        "max_s": latencies[-1],
        "all_statefulsets_s": all_created_s,
        "requests_per_job": total / count,
        "by_call": dict(sorted(operator.items(), key=lambda kv: -kv[1])),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--nnodes", type=int, default=2)
    args = parser.parse_args(argv)
    with ControlPlane() as cp, tempfile.TemporaryDirectory() as tmp:
        api = cp.api_client()
        install_crd(api)
        log = Path(tmp) / "operator.log"
        operator = start_operator(cp, log)
        try:
            results = [run_batch(cp, api, n, args.nnodes) for n in args.jobs]
        finally:
            operator.send_signal(signal.SIGTERM)
            operator.wait(30)
    print(f"apply -> StatefulSet created (nnodes={args.nnodes}; local 1.20 control plane, one operator process)")
    print(f"{'jobs':>5} {'p50 s':>8} {'p95 s':>8} {'max s':>8} {'all s':>8} {'requests/job':>13}")
    for r in results:
        print(
            f"{r['jobs']:>5} {r['p50_s']:>8.3f} {r['p95_s']:>8.3f} {r['max_s']:>8.3f} "
            f"{r['all_statefulsets_s']:>8.2f} {r['requests_per_job']:>13.1f}"
        )
    for r in results:
        calls = ", ".join(f"{v} {k[0]} {k[1]}{'/' + k[2] if k[2] else ''}" for k, v in r["by_call"].items())
        print(f"{r['jobs']} job(s): {calls}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
