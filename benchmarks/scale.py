"""Scale benchmark: many SFTJobs at once, sft-operator side by side with a naive kopf operator (it
only creates a Service and a StatefulSet per job and sets status.phase through kopf's patch), on
the real local control plane, one operator at a time, in one run.

    PYTHONPATH=. .venv/bin/python benchmarks/scale.py [--jobs 100 1000] [--backlog 500] [--profile DIR]

Per operator and job count, in a fresh namespace: one `kubectl apply` of every job; seconds from
the end of the apply until every StatefulSet exists and until every job has a status; the API
requests the operator made from the apply until it went quiet, by verb (the audit log, which here
records reads too; kubectl's, the controllers' and this script's own requests left out); the
operator's CPU seconds and RSS after them. For the largest count, the same operator then gets a
second batch of as many jobs (RSS after it: flat or growing?), and is restarted over all of them
(requests by verb: a restart should write nothing and read no job's children one by one). Then
"backlog": that many jobs created while no operator runs, then the operator starts: jobs per
second until every job has a status, and the operator's CPU for them.

``--profile DIR``: sft-operator runs under py-spy (pip install py-spy); each run leaves its log and
sampled stacks in DIR and a summary (where the CPU went: our modules, pydantic, the kubernetes
client, kopf, asyncio/aiohttp) is printed. The timings of a profiled run are not comparable.
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
import yaml

from devtools.controlplane import WRITE_VERBS, ControlPlane
from devtools.stack import free_port, install_crd
from devtools.tiny_model import tiny_job_spec
from sft_core import contract

QUIET_S = 5.0
LIMIT_S = 900.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
SHARED_CLAIM = "shared-checkpoints"
PROFILE_RATE = 50  # py-spy samples per second (on 2 loaded cores it fell behind at 97)
BENCHMARK_AGENT = "sft-scale-benchmark"  # this script's own API client, left out of the counts
NOT_THE_OPERATOR = ("kubectl", "kube-controller-manager", BENCHMARK_AGENT)


class AuditedControlPlane(ControlPlane):
    """The local control plane whose audit log also records reads (get, list, watch): the
    project's policy records writes only."""

    def _write_pki_and_tokens(self) -> dict[str, str]:
        tokens = super()._write_pki_and_tokens()
        policy = {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "omitStages": ["RequestReceived", "ResponseStarted", "Panic"],
            "rules": [{"level": "Metadata", "verbs": [*WRITE_VERBS, "get", "list", "watch"]}, {"level": "None"}],
        }
        (self.state_dir / "pki" / "audit-policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
        return tokens


class Requests:
    """The operator's requests in one namespace by verb, read incrementally from the audit log."""

    def __init__(self, cp: ControlPlane, namespace: str):
        self.cp, self.namespace, self.position = cp, namespace, cp.audit_position()
        self.verbs: Counter[str] = Counter()

    def update(self) -> Counter[str]:
        with self.cp.audit_log.open("rb") as f:
            f.seek(self.position)
            data = f.read()
        data = data[: data.rfind(b"\n") + 1]
        self.position += len(data)
        for line in data.splitlines():
            event = json.loads(line)
            if event.get("stage") != "ResponseComplete":
                continue
            if (event.get("objectRef") or {}).get("namespace") != self.namespace:
                continue
            agent = event.get("userAgent", "")
            if any(name in agent for name in NOT_THE_OPERATOR):
                continue
            self.verbs[event["verb"].upper()] += 1
        return Counter(self.verbs)


NAIVE_OPERATOR = """
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
"""


def job_manifest(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": contract.API_VERSION,
        "kind": contract.KIND,
        "metadata": {"name": name, "namespace": namespace},
        # No claim per job: 1000 Pending claims keep the volume controller busy writing Events.
        "spec": tiny_job_spec(checkpoints={"existingClaim": SHARED_CLAIM}),
    }


class Operator:
    """One operator process watching one namespace; CPU and RSS from /proc. ``profile``: a file
    for py-spy's sampled stacks (py-spy attaches to sft-operator once it is up: the stacks leave
    out the start-up, mostly the kubernetes client's imports)."""

    def __init__(self, kind: str, cp: ControlPlane, namespace: str, workdir: Path, profile: Path | None = None):
        self.kind, self.cp, self.namespace, self.workdir, self.profile = kind, cp, namespace, workdir, profile
        self.proc: subprocess.Popen[bytes] | None = None
        self.spy: subprocess.Popen[bytes] | None = None
        self.pid = 0

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.cp.kubeconfig), "SFT_METRICS_PORT": "0"}
        port = free_port()
        if self.kind == "naive":
            script = self.workdir / "naive_operator.py"
            script.write_text(NAIVE_OPERATOR)
            args = [
                sys.executable,
                "-m",
                "kopf",
                "run",
                "--standalone",
                "-n",
                self.namespace,
                "--liveness",
                f"http://127.0.0.1:{port}/healthz",
                str(script),
            ]
        else:
            args = [
                sys.executable,
                "-m",
                "sft_operator",
                "run",
                "--kubeconfig",
                str(self.cp.kubeconfig),
                "-n",
                self.namespace,
                "--liveness",
                f"http://127.0.0.1:{port}/healthz",
            ]
        log = (self.workdir / f"{self.kind}-{self.namespace}.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.pid = self.proc.pid
        wait(f"{self.kind} operator up", lambda: _answers(f"http://127.0.0.1:{port}/healthz"), 120)
        if self.profile is not None and self.kind != "naive":
            py_spy = Path(sys.executable).with_name("py-spy")
            # --gil: only the thread holding the GIL, i.e. the operator's CPU. Without it a thread
            # blocked in I/O (epoll, an SSL read, the pool's queue) or waiting for the GIL counted
            # as busy too: 57 % of a 200-job run's samples were such waits.
            self.spy = subprocess.Popen(
                [
                    str(py_spy),
                    "record",
                    "--nonblocking",
                    "--gil",
                    "-r",
                    str(PROFILE_RATE),
                    "-f",
                    "raw",
                    "-o",
                    str(self.profile),
                    "--pid",
                    str(self.pid),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.spy is not None:  # py-spy writes its stacks on SIGINT
            self.spy.send_signal(signal.SIGINT)
            self.spy.wait(60)
            self.spy = None
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


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
    manifest.write_text(
        json.dumps({"apiVersion": "v1", "kind": "List", "items": [job_manifest(n, namespace) for n in names]})
    )
    subprocess.run(
        ["kubectl", "--kubeconfig", str(cp.kubeconfig), "apply", "-f", str(manifest)],
        check=True,
        capture_output=True,
        timeout=LIMIT_S,
    )


def namespace_for(cp: ControlPlane, api: Any, name: str) -> str:
    """A fresh namespace with the claim every job names (a sweep sharing one claim; it stays
    Pending: nothing provisions it, and no pod runs)."""
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    cp.wait_for_default_service_account(name)
    core.create_namespaced_persistent_volume_claim(
        name,
        {
            "metadata": {"name": SHARED_CLAIM},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )
    return name


def count_ready(api: Any, namespace: str) -> tuple[int, int]:
    """(StatefulSets, jobs with a status phase) in the namespace."""
    sts = kubernetes.client.AppsV1Api(api).list_namespaced_stateful_set(namespace, _preload_content=False)
    jobs = kubernetes.client.CustomObjectsApi(api).list_namespaced_custom_object(
        contract.GROUP, contract.VERSION, namespace, contract.PLURAL, _preload_content=False
    )
    items = json.loads(jobs.data)["items"]
    return len(json.loads(sts.data)["items"]), sum(1 for job in items if (job.get("status") or {}).get("phase"))


def until_quiet(requests: Requests, operator: Operator) -> Counter[str]:
    """The operator's requests once it made none and was (almost) idle for QUIET_S: a restarting
    operator works through its watches' first listings for longer than that before its first
    request (a first version that waited for requests only measured a restart over 2000 jobs as
    done before it had begun)."""
    quiet_since, last, cpu = time.monotonic(), requests.update(), operator.cpu_s()
    while time.monotonic() - quiet_since < QUIET_S:
        time.sleep(1.0)
        current, busy = requests.update(), operator.cpu_s() - cpu
        cpu += busy
        if current != last or busy > 0.1:
            last, quiet_since = current, time.monotonic()
    return last


def apply_and_measure(
    cp: ControlPlane, api: Any, operator: Operator, names: list[str], workdir: Path, expected: int
) -> dict[str, Any]:
    """Apply ``names``, wait until ``expected`` StatefulSets and statuses exist in the namespace
    and the operator went quiet."""
    namespace = operator.namespace
    cpu0 = operator.cpu_s()
    requests = Requests(cp, namespace)
    started = time.monotonic()
    apply(cp, namespace, names, workdir)
    applied = time.monotonic()
    sts_at = status_at = None
    while time.monotonic() - applied < LIMIT_S and (sts_at is None or status_at is None):
        sts, statuses = count_ready(api, namespace)
        now = time.monotonic()
        if sts_at is None and sts >= expected:
            sts_at = now
        if status_at is None and statuses >= expected:
            status_at = now
        time.sleep(0.5)
    verbs = until_quiet(requests, operator)
    count = len(names)
    return {
        "operator": operator.kind,
        "jobs": count,
        "apply_s": applied - started,
        "statefulsets_after_apply_s": (sts_at - applied) if sts_at else None,
        "statuses_after_apply_s": (status_at - applied) if status_at else None,
        "requests": dict(sorted(verbs.items())),
        "requests_per_job": sum(verbs.values()) / count,
        "writes_per_job": sum(n for verb, n in verbs.items() if verb.lower() in WRITE_VERBS) / count,
        "cpu_ms_per_job": 1000 * (operator.cpu_s() - cpu0) / count,
        "rss_mb": operator.rss_mb(),
    }


def run_apply(
    cp: ControlPlane, api: Any, kind: str, count: int, workdir: Path, again: bool, profile: Path | None
) -> list[dict[str, Any]]:
    """One apply of ``count`` jobs; with ``again``, a second batch of as many into the same
    operator (RSS: flat?) and a restart of the operator over all of them (requests by verb)."""
    namespace = namespace_for(cp, api, f"{kind}-{count}")
    operator = Operator(kind, cp, namespace, workdir, profile and profile / f"{kind}-{count}.txt")
    operator.start()
    try:
        results = [apply_and_measure(cp, api, operator, [f"job-{i:04d}" for i in range(count)], workdir, count)]
        if again:
            second = apply_and_measure(
                cp, api, operator, [f"job-{i:04d}" for i in range(count, 2 * count)], workdir, 2 * count
            )
            results.append({**second, "batch": "second"})
    finally:
        operator.stop()
    if again:  # a restart over every job: what it costs the API server
        requests = Requests(cp, namespace)
        operator = Operator(kind, cp, namespace, workdir, profile and profile / f"{kind}-{count}-restart.txt")
        started = time.monotonic()
        operator.start()
        try:
            cpu0 = operator.cpu_s()
            verbs = until_quiet(requests, operator)
            results.append(
                {
                    "operator": kind,
                    "jobs": 2 * count,
                    "batch": "restart",
                    "quiet_after_s": time.monotonic() - started - QUIET_S,
                    "requests": dict(sorted(verbs.items())),
                    "requests_per_job": sum(verbs.values()) / (2 * count),
                    "writes_per_job": sum(n for verb, n in verbs.items() if verb.lower() in WRITE_VERBS) / (2 * count),
                    "cpu_s": operator.cpu_s() - cpu0,
                    "rss_mb": operator.rss_mb(),
                }
            )
        finally:
            operator.stop()
    return results


def run_backlog(
    cp: ControlPlane, api: Any, kind: str, count: int, workdir: Path, profile: Path | None
) -> dict[str, Any]:
    namespace = namespace_for(cp, api, f"{kind}-backlog-{count}")
    apply(cp, namespace, [f"job-{i:04d}" for i in range(count)], workdir)
    requests = Requests(cp, namespace)
    operator = Operator(kind, cp, namespace, workdir, profile and profile / f"{kind}-backlog-{count}.txt")
    started = time.monotonic()
    operator.start()
    try:
        wait("every status", lambda: count_ready(api, namespace)[1] >= count, LIMIT_S, 0.5)
        took = time.monotonic() - started
        cpu_s, rss_mb = operator.cpu_s(), operator.rss_mb()
        verbs = until_quiet(requests, operator)
        return {
            "operator": kind,
            "jobs": count,
            "jobs_per_s": count / took,
            "cpu_s": cpu_s,
            "cpu_ms_per_job": 1000 * cpu_s / count,
            "rss_mb": rss_mb,
            "requests": dict(sorted(verbs.items())),
            "requests_per_job": sum(verbs.values()) / count,
        }
    finally:
        operator.stop()


# --- profile summary --------------------------------------------------------------------------

# Where a sample's CPU went: the layer that made the call (the first of these with a frame in
# the stack), then the kind of work (the leaf-most frame that names one).
PROFILE_LAYERS = [
    ("kubernetes client (sync, in handler threads)", "(kubernetes/"),
    ("sft_operator (our code, without its client calls)", "(sft_operator/"),
    ("kopf (watches, queues, handler dispatch, its own API calls)", "(kopf/"),
]
PROFILE_ENTRY = ("<module> (sft_operator/__main__.py", "run (sft_operator/cli.py", "run (sft_operator/operator_main.py")
PROFILE_WORK = [
    ("json", "(json/"),
    ("pydantic", "(pydantic"),
    ("kubernetes client models", "(kubernetes/client/models/"),
    ("kubernetes client api_client", "(kubernetes/client/api_client.py"),
    ("urllib3/http.client/ssl/socket", "(urllib3/"),
    ("urllib3/http.client/ssl/socket", "(http/client.py"),
    ("urllib3/http.client/ssl/socket", "(ssl.py"),
    ("urllib3/http.client/ssl/socket", "(socket.py"),
    ("aiohttp", "(aiohttp/"),
    ("render", "(sft_operator/render.py"),
    ("status", "(sft_operator/status.py"),
    ("status", "(sft_operator/pod_facts.py"),
    ("status", "(sft_operator/run_policies.py"),
    ("status", "(sft_operator/training_outcome.py"),
    ("models", "(sft_operator/models.py"),
    ("copy.deepcopy", "(copy.py"),
    ("logging", "(logging/"),
    ("asyncio", "(asyncio/"),
    ("thread pool", "(concurrent/futures/"),
    ("threading", "(threading.py"),
    ("kopf", "(kopf/"),
    ("sft_operator", "(sft_operator/"),
]


def summarize_profile(path: Path, top: int = 12) -> str:
    """Where the samples went (layer, then kind of work) and the heaviest of our and kopf's
    functions (inclusive), from py-spy's raw (collapsed) output."""
    layers: Counter[str] = Counter()
    work: Counter[tuple[str, str]] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        samples = int(n)
        total += samples
        frames = stack.split(";")
        inner = [f for f in frames if not f.startswith(PROFILE_ENTRY)]  # kopf.run is called by ours
        layer = next(
            (name for name, needle in PROFILE_LAYERS if any(needle in f for f in inner)),
            "other (imports, start-up, idle threads)",
        )
        kind = "other"
        for frame in reversed(frames):
            kind = next((name for name, needle in PROFILE_WORK if needle in frame), "")
            if kind:
                break
        layers[layer] += samples
        work[(layer, kind or "other")] += samples
        for frame in set(frames):
            if "(sft_operator/" in frame or "(kopf/" in frame:
                inclusive[frame] += samples
    if not total:
        return f"{path.name}: no samples"
    lines = [f"{path.name}: {total} samples (≈1/{PROFILE_RATE} s of CPU each)"]
    for layer, n in layers.most_common():
        lines.append(f"  {100 * n / total:5.1f}%  {layer}")
        parts = [(kind, m) for (at, kind), m in work.most_common() if at == layer and 100 * m / total >= 0.5]
        lines.append("          " + ", ".join(f"{kind} {100 * m / total:.1f}%" for kind, m in parts))
    lines.append("  inclusive, sft_operator's and kopf's heaviest functions:")
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--backlog", type=int, default=500, help="0 skips the backlog run")
    parser.add_argument("--no-second", action="store_true", help="skip the second batch and the restart")
    parser.add_argument("--only", choices=("naive", "sft-operator"), help="one operator only")
    parser.add_argument("--profile", type=Path, help="run sft-operator under py-spy; stacks and summaries here")
    args = parser.parse_args(argv)
    kinds = [args.only] if args.only else ["naive", "sft-operator"]
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    results, backlogs = [], []
    with AuditedControlPlane() as cp, tempfile.TemporaryDirectory() as tmp:
        api = cp.api_client()
        api.user_agent = BENCHMARK_AGENT
        install_crd(api)
        for count in args.jobs:
            again = count == max(args.jobs) and not args.no_second
            for kind in kinds:  # alternating, one operator at a time
                for result in run_apply(cp, api, kind, count, args.profile or Path(tmp), again, args.profile):
                    results.append(result)
                    print(f"  {result}", flush=True)
        if args.backlog:
            for kind in kinds:
                backlogs.append(run_backlog(cp, api, kind, args.backlog, args.profile or Path(tmp), args.profile))
                print(f"  {backlogs[-1]}", flush=True)

    def secs(value: float | None) -> str:
        return f"{value:.1f}" if value is not None else "timeout"

    print(
        "\none kubectl apply of N jobs (local control plane; seconds after the apply ended; requests: the "
        "operator's, from the apply until it was quiet 5 s, by verb)"
    )
    print(
        f"{'operator':>13} {'jobs':>5} {'batch':>7} {'apply s':>8} {'all sts s':>10} {'all status s':>13} "
        f"{'req/job':>8} {'writes/job':>11} {'CPU ms/job':>11} {'RSS MB':>7}  requests by verb"
    )
    for r in results:
        if r.get("batch") == "restart":
            continue
        print(
            f"{r['operator']:>13} {r['jobs']:>5} {r.get('batch', 'first'):>7} {r['apply_s']:>8.1f} "
            f"{secs(r['statefulsets_after_apply_s']):>10} {secs(r['statuses_after_apply_s']):>13} "
            f"{r['requests_per_job']:>8.1f} {r['writes_per_job']:>11.1f} {r['cpu_ms_per_job']:>11.1f} "
            f"{r['rss_mb']:>7.0f}  {r['requests']}"
        )
    for r in results:
        if r.get("batch") == "restart":
            print(
                f"restart: {r['operator']} over {r['jobs']} existing jobs: quiet after {r['quiet_after_s']:.1f} s, "
                f"{r['requests_per_job']:.2f} requests/job ({r['writes_per_job']:.2f} writes/job) "
                f"{r['requests']}, CPU {r['cpu_s']:.1f} s, RSS {r['rss_mb']:.0f} MB"
            )
    for b in backlogs:
        print(
            f"backlog: {b['operator']} over {b['jobs']} existing jobs: {b['jobs_per_s']:.1f} jobs/s, "
            f"CPU {b['cpu_s']:.1f} s ({b['cpu_ms_per_job']:.0f} ms/job), RSS {b['rss_mb']:.0f} MB, "
            f"{b['requests_per_job']:.1f} requests/job {b['requests']}"
        )
    if args.profile:
        for path in sorted(args.profile.glob("*.txt")):
            print()
            print(summarize_profile(path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
