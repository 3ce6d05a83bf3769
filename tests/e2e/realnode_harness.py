"""The shared real stack of the e2e modules and the short names their tests use.

ONE RealStack (devtools.realstack: control plane, dockerd + kubelet, both images built, `helm
install` of the chart) serves every e2e module of a pytest session (tests/e2e/conftest.py): it
starts on the first test that asks for it and stops at the end of the session, or earlier when a
module needs the machine's real node for a stack of its own (release(): one real node per machine,
devtools.node.MACHINE_LOCK). Each test deletes its own jobs and their claims (the `jobs` fixture),
and a test that changes the stack (the node's status, the release's values) puts it back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from devtools.controlplane import pid_alive
from devtools.demo import describe, follow_job
from devtools.node import DOCKER
from devtools.node import docker as node_docker
from devtools.realstack import ASSETS_CLAIM, OPERATOR_NS, RELEASE, RealStack
from devtools.stack import StackError, wait_until
from devtools.tiny_model import build_tiny_assets
from sft_core import contract
from sft_core.checkpoints import HF_FORMAT_DIR
from sft_models.models import parse_job
from sft_models.naming import claim_name, statefulset_name

ROOT = Path(__file__).resolve().parents[2]

# Under pytest-xdist the e2e modules run on two workers against one stack: each its own namespace.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
JOB_NS = f"realnode-e2e-{WORKER}" if WORKER else "realnode-e2e"
# A job's pods request 250m CPU each: two workers' two-pod jobs and the operator fit the node's 2 cores.
POD_CPU = "250m"
# SharedStack's coordination files (under xdist), and how long the starting worker waits at most
# for the other to be done before it stops the stack anyway.
STATE_FILE, USERS_DIR = "stack.json", "users"
OTHERS_DONE_TIMEOUT_S = 3600.0
JOB_TIMEOUT_S = 900.0
# The operator's policy clock (deadlines, start-up timeouts, stalls, TTL) ticks every 5 s here
# instead of 30 s, through the chart's extraEnv: the tests wait for policies, not for the clock.
POLICY_INTERVAL_S = 5
HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# The images' user, and the group the rendered pod's fsGroup gives its volumes.
POD_UID = POD_FS_GROUP = 65532
SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class Jobs:
    """Short names for what the tests do with SFTJobs, pods and claims on the real node."""

    def __init__(self, stack: RealStack, assets_dir: Path, assets_source: Path):
        # assets_dir: the claim's directory; assets_source: the tiny model and data it was filled from
        self.stack, self.assets_dir, self.assets_source = stack, assets_dir, assets_source
        self.api = stack.api_client()
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.apps = kubernetes.client.AppsV1Api(self.api)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)

    def manifest(self, name: str, **spec: Any) -> dict[str, Any]:
        manifest = self.stack.job_manifest(name, JOB_NS, cpu=POD_CPU)
        manifest["spec"].update(spec)
        return manifest

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(
            contract.GROUP, contract.VERSION, JOB_NS, contract.PLURAL, manifest
        )

    def job(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(contract.GROUP, contract.VERSION, JOB_NS, contract.PLURAL, name)

    def status(self, name: str) -> dict[str, Any]:
        return self.job(name).get("status") or {}

    def progress(self, name: str) -> dict[str, Any]:
        return self.status(name).get("progress") or {}

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            contract.GROUP, contract.VERSION, JOB_NS, contract.PLURAL, name, {"spec": spec}
        )

    def follow(self, name: str, timeout_s: float = JOB_TIMEOUT_S) -> dict[str, Any]:
        def on_update(job: dict[str, Any]) -> None:
            print(f"{time.strftime('%H:%M:%S')} {name}: {describe(job)}")

        try:
            return follow_job(self.api, JOB_NS, name, timeout_s, on_update)
        except TimeoutError:
            self.show_where_stuck()
            raise

    def show_where_stuck(self) -> None:
        print(self.stack.kubectl("-n", JOB_NS, "describe", "pods").stdout[-6000:])
        print(self.stack.operator_log())

    def pods(self, name: str) -> list[Any]:
        selector = f"{contract.LABEL_JOB_NAME}={name}"
        return self.core.list_namespaced_pod(JOB_NS, label_selector=selector).items

    def pod(self, name: str) -> Any | None:
        try:
            return self.core.read_namespaced_pod(name, JOB_NS)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def replicas(self, job: dict[str, Any]) -> int | None:
        try:
            return self.apps.read_namespaced_stateful_set(statefulset_name(parse_job(job)), JOB_NS).spec.replicas
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def events(self, name: str) -> list[Any]:
        return [
            e
            for e in self.core.list_namespaced_event(JOB_NS).items
            if e.involved_object.kind == contract.KIND and e.involved_object.name == name
        ]

    def claim_dir(self, job: dict[str, Any], claim: str | None = None) -> Path:
        """The host directory behind the job's claim (a `local` volume of the node's provisioner)."""
        return self.stack.claim_dir(JOB_NS, claim or claim_name(parse_job(job)))

    def trainer_container(self, pod_name: str) -> str:
        return self.stack.pod_container(JOB_NS, pod_name, contract.TRAINER_CONTAINER)

    def trainer_started_at(self, pod_name: str) -> str | None:
        pod = self.pod(pod_name)
        for status in (pod.status.container_statuses or []) if pod else []:
            if status.name == contract.TRAINER_CONTAINER and status.state.running:
                return status.state.running.started_at.isoformat()
        return None


def docker(*args: str) -> str:
    proc = node_docker(*args)
    assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr.strip()}"
    return proc.stdout


def training(jobs: Jobs, name: str, more_than: int = 0) -> Callable[[], bool]:
    def probe() -> bool:
        progress = jobs.progress(name)
        return (
            jobs.status(name).get("phase") == "Running"
            and progress.get("stage") == "Training"
            and progress.get("samplesSeen", 0) > more_than
        )

    return probe


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    found = next((c for c in status.get("conditions", []) if c["type"] == type_), None)
    assert found is not None, (type_, status.get("conditions"))
    return found


def complete_hf_dirs(root: Path) -> set[str]:
    base = root / HF_FORMAT_DIR
    if not base.is_dir():
        return set()
    return {
        d.name
        for d in base.iterdir()
        if d.is_dir() and (d / "config.json").is_file() and any((d / w).is_file() for w in HF_WEIGHT_FILES)
    }


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def job_names(jobs: Jobs) -> set[str]:
    return {
        j["metadata"]["name"]
        for j in jobs.custom.list_namespaced_custom_object(contract.GROUP, contract.VERSION, JOB_NS, contract.PLURAL)[
            "items"
        ]
    }


def delete_jobs_since(jobs: Jobs, before: set[str]) -> None:
    """The jobs made since ``before`` and their claims deleted, waited for: a failed test leaves no
    training behind (the node's 2 cores go to the next), and a rerun starts from nothing, not from
    the names and checkpoints of its first try."""
    claims: set[str] = set()
    made = sorted(job_names(jobs) - before)
    for name in made:
        try:  # a TTL may take a job first: a 404 is fine
            claim = claim_name(parse_job(jobs.job(name)))
            claims.add(claim)
            jobs.custom.delete_namespaced_custom_object(contract.GROUP, contract.VERSION, JOB_NS, contract.PLURAL, name)
            jobs.core.delete_namespaced_persistent_volume_claim(claim, JOB_NS)
        except ApiException as e:
            if e.status != 404:
                raise

    def kill_pods() -> None:
        # The test is over: its pods are killed at once (grace 0), not given their grace period to save
        # a checkpoint nobody reads (a SIGTERM save is a minute of the 2 cores the next test needs).
        for name in made:
            for pod in jobs.core.list_namespaced_pod(JOB_NS, label_selector=f"{contract.LABEL_JOB_NAME}={name}").items:
                try:
                    jobs.core.delete_namespaced_pod(pod.metadata.name, JOB_NS, grace_period_seconds=0)
                except ApiException as e:
                    if e.status != 404:
                        raise

    def jobs_gone() -> bool:
        kill_pods()
        return not (job_names(jobs) - before)

    wait_until("the test's jobs deleted, their pods killed", jobs_gone, timeout_s=180, interval_s=1)

    def claims_gone() -> bool:
        # A deleted claim stays (terminating) until pvc-protection sees its pods gone: a rerun's job of
        # the same name would otherwise find it and its pods stay unschedulable.
        kill_pods()  # the StatefulSet may have made one more before the garbage collector took it
        left = {c.metadata.name for c in jobs.core.list_namespaced_persistent_volume_claim(JOB_NS).items}
        return not (claims & left)

    wait_until("the test's claims deleted", claims_gone, timeout_s=180, interval_s=1)


def helm(stack: RealStack, *args: str) -> subprocess.CompletedProcess[str]:
    """helm (scripts/provision-helm.sh's) with the stack's kubeconfig and Helm homes."""
    binary = (
        subprocess.run(["bash", "scripts/provision-helm.sh"], capture_output=True, text=True, timeout=600, cwd=ROOT)
        .stdout.strip()
        .splitlines()[-1]
    )
    home = stack.state_dir / "helm"
    env = {
        **os.environ,
        "KUBECONFIG": str(stack.kubeconfig),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=180, env=env)


def release_values(stack: RealStack) -> dict[str, Any]:
    """The release's values as the chart renders them: its defaults and what was set (`helm get
    values --all`)."""
    import json

    proc = helm(stack, "get", "values", RELEASE, "--namespace", OPERATOR_NS, "--all", "--output", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout or "{}") or {}


def helm_upgrade(stack: RealStack, *sets: str) -> None:
    """`helm upgrade --reuse-values` of the stack's release, waited until rolled out and a replica
    of the new ones leads (stack.operator_pod follows it: later tests exec into it)."""
    proc = helm(
        stack,
        "upgrade",
        RELEASE,
        str(ROOT / "charts" / "sft-operator"),
        "--namespace",
        OPERATOR_NS,
        "--reuse-values",
        "--server-side=false",
        *(a for s in sets for a in ("--set", s)),
    )
    assert proc.returncode == 0, proc.stderr
    rollout = stack.kubectl(
        "-n", OPERATOR_NS, "rollout", "status", f"deployment/{RELEASE}-sft-operator", "--timeout=300s", timeout=320
    )
    assert rollout.returncode == 0, rollout.stderr
    core = kubernetes.client.CoreV1Api(stack.api_client())

    def new_leader() -> str:
        pods = {
            p.metadata.name
            for p in core.list_namespaced_pod(OPERATOR_NS, label_selector=f"app.kubernetes.io/instance={RELEASE}").items
            if not p.metadata.deletion_timestamp
        }
        leader = stack.leader_pod()
        return leader if leader in pods else ""

    stack.operator_pod = wait_until("a new operator replica leading", new_leader, timeout_s=180, interval_s=1)


class SharedStack:
    """The session's one RealStack and its Jobs, started on first use (see the module's doc).

    Under pytest-xdist (``coord_dir``: a directory every worker of the run shares) the e2e modules
    run in two scopes, on two workers, against ONE stack: the first worker to need it starts it
    and writes its connection (STATE_FILE), the other attaches to it; each registers in USERS_DIR
    while it uses the stack. The worker that started it stops it once no worker uses it (its
    processes belong to that worker: they die with it). Each worker's jobs are in a namespace of
    its own (JOB_NS), so a test sees and deletes only its own."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory, coord_dir: Path | None = None):
        self.tmp_path_factory = tmp_path_factory
        self.coord_dir = coord_dir
        self._stack: RealStack | None = None
        self._jobs: Jobs | None = None
        self._failed = ""  # pytest asks again for each test: one failed start is enough
        self._stoppers: list[threading.Thread] = []

    def stack(self) -> RealStack:
        if self._failed:
            pytest.fail(self._failed, pytrace=False)
        if self._stack is None:
            if os.geteuid() != 0:
                self._fail("the real-node e2e needs root (dockerd, kubelet, iptables)")
            if not Path(DOCKER).is_file() or not shutil.which("dockerd"):
                self._fail(f"docker is not available ({DOCKER} / dockerd missing): apt-get install docker.io")
            if not shutil.which("kubectl"):
                self._fail("kubectl is not in PATH")
            if self.coord_dir is None:
                self._stack = self._start()
            else:
                with self._coordinated():
                    connection = self._running_connection()
                    if connection is not None:
                        self._stack = RealStack.attach(connection, on_step=lambda msg: print(f"realstack: {msg}"))
                        print(f"realstack: attached to the stack worker {connection['owner']} started")
                    else:
                        self._stack = self._start()
                        state = {**self._stack.connection(), "owner": WORKER, "owner_pid": os.getpid()}
                        (self.coord_dir / STATE_FILE).write_text(json.dumps(state))
                    self._user_file().touch()
        return self._stack

    def _start(self) -> RealStack:
        stack = RealStack(
            self.tmp_path_factory.mktemp("realstack"),
            on_step=lambda msg: print(f"realstack: {msg}"),
            helm_set=["extraEnv[0].name=SFT_POLICY_INTERVAL_S"],
            helm_set_string=[f"extraEnv[0].value={POLICY_INTERVAL_S}"],
        )
        try:
            stack.start()  # stops what it started when it fails
        except StackError as e:
            self._fail(f"real-node stack could not start: {e}")
        return stack

    @contextlib.contextmanager
    def _coordinated(self) -> Iterator[None]:
        """The workers' lock over STATE_FILE and USERS_DIR."""
        import fcntl

        assert self.coord_dir is not None
        (self.coord_dir / USERS_DIR).mkdir(parents=True, exist_ok=True)
        with open(self.coord_dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _running_connection(self) -> dict[str, Any] | None:
        """The connection of the stack a live worker started, or None (a dead worker's is removed)."""
        assert self.coord_dir is not None
        try:
            connection: dict[str, Any] = json.loads((self.coord_dir / STATE_FILE).read_text())
        except FileNotFoundError:
            return None
        if not pid_alive(connection["owner_pid"]):  # its stack died with it
            (self.coord_dir / STATE_FILE).unlink()
            return None
        return connection

    def _user_file(self) -> Path:
        assert self.coord_dir is not None
        return self.coord_dir / USERS_DIR / f"{WORKER or 'main'}-{os.getpid()}"

    def jobs(self) -> Jobs:
        if self._jobs is None:
            stack = self.stack()
            kubernetes.client.CoreV1Api(stack.api_client()).create_namespace({"metadata": {"name": JOB_NS}})
            assert stack.cp is not None
            stack.cp.wait_for_default_service_account(JOB_NS)
            built = build_tiny_assets(self.tmp_path_factory.mktemp("assets")).model_dir.parent
            # The jobs read the model and data from a claim filled beforehand (root's files, 0644),
            # mounted read-only: jobs.assets_dir is that claim's directory on this machine.
            self._jobs = Jobs(stack, stack.fill_claim(JOB_NS, ASSETS_CLAIM, built), built)
        return self._jobs

    def _fail(self, reason: str) -> NoReturn:
        self._failed = reason
        pytest.fail(reason, pytrace=False)

    def release(self, wait: bool = True) -> None:
        """This worker is done with the stack: the next use starts (or attaches) anew. The stack
        is stopped (the real node free for another) by the worker that started it, once no worker
        uses it: here and now (``wait``: waiting for the others, bounded), or by a thread while
        this worker runs other tiers."""
        stack, self._stack, self._jobs = self._stack, None, None
        if stack is None:
            return
        if self.coord_dir is None:
            self._stop(stack)
            return
        self._user_file().unlink(missing_ok=True)
        if stack.attached:
            stack.stop()  # closes this process's client
            return
        if wait:
            self._stop_when_unused(stack)
        else:
            stopper = threading.Thread(target=self._stop_when_unused, args=(stack,), name="realstack-stopper")
            stopper.start()
            self._stoppers.append(stopper)

    def _stop_when_unused(self, stack: RealStack) -> None:
        assert self.coord_dir is not None
        deadline = time.monotonic() + OTHERS_DONE_TIMEOUT_S
        while True:
            with self._coordinated():
                users = sorted(p.name for p in (self.coord_dir / USERS_DIR).iterdir() if _alive(p.name))
                if not users or time.monotonic() >= deadline:
                    (self.coord_dir / STATE_FILE).unlink(missing_ok=True)  # no one attaches now
                    break
            time.sleep(2)
        if users:
            print(f"\nrealstack: stopped though {users} still registered after {OTHERS_DONE_TIMEOUT_S:.0f}s")
        self._stop(stack)

    def _stop(self, stack: RealStack) -> None:
        stack.stop()
        print("\nreal-node e2e times: " + ", ".join(f"{k} {v:.1f}s" for k, v in stack.times.items()))

    def close(self) -> None:
        """The session's end: released, waiting for the other workers, and every stop finished."""
        self.release(wait=True)
        for stopper in self._stoppers:
            stopper.join()


def _alive(user: str) -> bool:
    """Whether the worker of a user file ("<worker>-<pid>") still runs: a worker that crashed
    while it used the stack does not hold it for the others."""
    pid = user.rsplit("-", 1)[-1]
    return pid.isdigit() and pid_alive(int(pid))
