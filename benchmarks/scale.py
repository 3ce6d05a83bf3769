"""Scale benchmark: many SFTJobs at once, sft-operator side by side with a naive kopf operator (it
only creates a Service and a StatefulSet per job and sets status.phase through kopf's patch), on
the real local control plane, one operator at a time, in one run.

    .venv/bin/python benchmarks/scale.py [--jobs 100 1000] [--backlog 500]

Per operator and job count, in a fresh namespace: one `kubectl apply` of every job; seconds from
the end of the apply until every StatefulSet exists and until every job has a status; the API
requests the operator made from the apply until it went quiet, by verb (the audit log, kubectl's
own requests left out); the operator's CPU seconds and RSS after them. Then "backlog": that many
jobs created while no operator runs, then the operator starts: jobs per second until every job
has a status, and the operator's CPU for them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes

from sft_operator import contract
from devtools.controlplane import ControlPlane
from devtools.stack import free_port, install_crd
from devtools.tiny_model import tiny_job_spec

QUIET_S = 5.0
LIMIT_S = 900.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

NAIVE_OPERATOR = '''
import kopf, kubernetes

kubernetes.config.load_kube_config()
apps, core = kubernetes.client.AppsV1Api(), kubernetes.client.CoreV1Api()

@kopf.on.startup()
def configure(settings, **_):
    settings.scanning.disabled = True
    settings.posting.level = 40

@kopf.on.create("finetune.dev", "v1alpha1", "sftjobs")
def create(name, namespace, spec, body, patch, **_):
    labels = {"app": name}
    service = {"metadata": {"name": name, "labels": labels}, "spec": {"clusterIP": "None", "selector": labels}}
    sts = {"metadata": {"name": name, "labels": labels}, "spec": {
        "replicas": spec.get("nnodes", 1), "serviceName": name, "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "t", "image": "x"}]}}}}
    kopf.adopt(service, owner=body)
    kopf.adopt(sts, owner=body)
    core.create_namespaced_service(namespace, service)
    apps.create_namespaced_stateful_set(namespace, sts)
    patch.status["phase"] = "Pending"
'''


def job_manifest(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": contract.API_VERSION, "kind": contract.KIND,
        "metadata": {"name": name, "namespace": namespace},
        # No claim per job: 1000 Pending claims keep the volume controller busy writing Events.
        "spec": tiny_job_spec(checkpoints={"existingClaim": "shared-checkpoints"}),
    }


class Operator:
    """One operator process watching one namespace; CPU and RSS from /proc."""

    def __init__(self, kind: str, cp: ControlPlane, namespace: str, workdir: Path):
        self.kind, self.cp, self.namespace, self.workdir = kind, cp, namespace, workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.cp.kubeconfig), "SFT_METRICS_PORT": "0"}
        port = free_port()
        if self.kind == "naive":
            script = self.workdir / "naive_operator.py"
            script.write_text(NAIVE_OPERATOR)
            args = [sys.executable, "-m", "kopf", "run", "--standalone", "-n", self.namespace,
                    "--liveness", f"http://127.0.0.1:{port}/healthz", str(script)]
        else:
            args = [sys.executable, "-m", "sft_operator", "run", "--kubeconfig", str(self.cp.kubeconfig),
                    "-n", self.namespace, "--liveness", f"http://127.0.0.1:{port}/healthz"]
        log = (self.workdir / f"{self.kind}-{self.namespace}.log").open("wb")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait(f"{self.kind} operator up", lambda: _answers(f"http://127.0.0.1:{port}/healthz"), 120)

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


def wait(what: str, probe: Any, timeout_s: float, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval_s)


def apply(cp: ControlPlane, namespace: str, names: list[str], workdir: Path) -> None:
    manifest = workdir / f"{namespace}.json"
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                    "items": [job_manifest(n, namespace) for n in names]}))
    subprocess.run(["kubectl", "--kubeconfig", str(cp.kubeconfig), "apply", "-f", str(manifest)],
                   check=True, capture_output=True, timeout=LIMIT_S)


def namespace_for(cp: ControlPlane, api: Any, name: str) -> str:
    kubernetes.client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    cp.wait_for_default_service_account(name)
    return name


def count_ready(api: Any, namespace: str) -> tuple[int, int]:
    """(StatefulSets, jobs with a status phase) in the namespace."""
    sts = kubernetes.client.AppsV1Api(api).list_namespaced_stateful_set(namespace).items
    jobs = kubernetes.client.CustomObjectsApi(api).list_namespaced_custom_object(
        contract.GROUP, contract.VERSION, namespace, contract.PLURAL)["items"]
    return len(sts), sum(1 for job in jobs if (job.get("status") or {}).get("phase"))


def operator_requests(cp: ControlPlane, mark: int, namespace: str) -> Counter[str]:
    """Writes by verb (audit log) in the namespace, without kubectl's and the controllers'."""
    verbs: Counter[str] = Counter()
    for write in cp.write_requests(since=mark, namespace=namespace):
        agent = write.user_agent or ""
        if agent.startswith("kubectl") or "kube-controller-manager" in agent:
            continue
        verbs[write.verb.upper()] += 1
    return verbs


def run_apply(cp: ControlPlane, api: Any, kind: str, count: int, workdir: Path) -> dict[str, Any]:
    namespace = namespace_for(cp, api, f"{kind}-{count}")
    operator = Operator(kind, cp, namespace, workdir)
    operator.start()
    try:
        cpu0 = operator.cpu_s()
        mark = cp.audit_position()
        names = [f"job-{i:04d}" for i in range(count)]
        started = time.monotonic()
        apply(cp, namespace, names, workdir)
        applied = time.monotonic()
        sts_at = status_at = None
        while time.monotonic() - applied < LIMIT_S and (sts_at is None or status_at is None):
            sts, statuses = count_ready(api, namespace)
            now = time.monotonic()
            if sts_at is None and sts >= count:
                sts_at = now
            if status_at is None and statuses >= count:
                status_at = now
            time.sleep(0.5)
        quiet_since, last = time.monotonic(), operator_requests(cp, mark, namespace)
        while time.monotonic() - quiet_since < QUIET_S:
            time.sleep(1.0)
            current = operator_requests(cp, mark, namespace)
            if current != last:
                last, quiet_since = current, time.monotonic()
        return {
            "operator": kind, "jobs": count, "apply_s": applied - started,
            "statefulsets_after_apply_s": (sts_at - applied) if sts_at else None,
            "statuses_after_apply_s": (status_at - applied) if status_at else None,
            "writes": dict(last), "writes_per_job": sum(last.values()) / count,
            "cpu_ms_per_job": 1000 * (operator.cpu_s() - cpu0) / count, "rss_mb": operator.rss_mb(),
        }
    finally:
        operator.stop()


def run_backlog(cp: ControlPlane, api: Any, kind: str, count: int, workdir: Path) -> dict[str, Any]:
    namespace = namespace_for(cp, api, f"{kind}-backlog-{count}")
    apply(cp, namespace, [f"job-{i:04d}" for i in range(count)], workdir)
    operator = Operator(kind, cp, namespace, workdir)
    started = time.monotonic()
    operator.start()
    try:
        wait("every status", lambda: count_ready(api, namespace)[1] >= count, LIMIT_S, 0.5)
        took = time.monotonic() - started
        return {"operator": kind, "jobs": count, "jobs_per_s": count / took, "cpu_s": operator.cpu_s(),
                "rss_mb": operator.rss_mb()}
    finally:
        operator.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--backlog", type=int, default=500, help="0 skips the backlog run")
    args = parser.parse_args(argv)
    results, backlogs = [], []
    with ControlPlane() as cp, tempfile.TemporaryDirectory() as tmp:
        api = cp.api_client()
        install_crd(api)
        for count in args.jobs:
            for kind in ("naive", "sft-operator"):  # alternating, one operator at a time
                results.append(run_apply(cp, api, kind, count, Path(tmp)))
                print(f"  {results[-1]}", flush=True)
        if args.backlog:
            for kind in ("naive", "sft-operator"):
                backlogs.append(run_backlog(cp, api, kind, args.backlog, Path(tmp)))
                print(f"  {backlogs[-1]}", flush=True)

    def secs(value: float | None) -> str:
        return f"{value:.1f}" if value is not None else "timeout"

    print("one kubectl apply of N jobs (local 1.20 control plane; seconds after the apply ended)")
    print(f"{'operator':>13} {'jobs':>5} {'apply s':>8} {'all sts s':>10} {'all status s':>13} {'writes/job':>11} "
          f"{'CPU ms/job':>11} {'RSS MB':>7}  writes by verb")
    for r in results:
        print(f"{r['operator']:>13} {r['jobs']:>5} {r['apply_s']:>8.1f} {secs(r['statefulsets_after_apply_s']):>10} "
              f"{secs(r['statuses_after_apply_s']):>13} {r['writes_per_job']:>11.1f} {r['cpu_ms_per_job']:>11.1f} "
              f"{r['rss_mb']:>7.0f}  {r['writes']}")
    for b in backlogs:
        print(f"backlog: {b['operator']} over {b['jobs']} existing jobs: {b['jobs_per_s']:.1f} jobs/s, "
              f"CPU {b['cpu_s']:.1f} s, RSS {b['rss_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
