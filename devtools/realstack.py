"""Dev/test only: the whole user path on this machine's real node, started and stopped as one.

    stack = RealStack(state_dir, on_step=print).start()
    # control plane (advertising this machine's IP) + RealNode (dockerd, kubelet, kube-proxy, CNI,
    # dev DNS, the provisioner of `local` volumes) + both images (scripts/build-images.sh) +
    # `helm install` of charts/sft-operator (the operator as a pod from its image, the chart's RBAC
    # only), waited until the operator pod is Ready
    stack.fill_claim("default", ASSETS_CLAIM, tiny_assets_dir)   # the demo job's model and data
    ...
    stack.stop()

Used by `make demo` (devtools.demo), tests/e2e/test_real_node.py and the benchmarks that train
(benchmarks/chaos.py, benchmarks/status_freshness.py). Every wait is bounded; failures are
StackError with a one-line reason (and the piece's log).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from devtools.controlplane import ControlPlane, ControlPlaneError
from devtools.local_provisioner import ANN_PROVISIONED_BY, PROVISIONER, root_umask
from devtools.node import DOCKER, NodeError, RealNode, docker, host_ip
from devtools.stack import StackError

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "sft-operator"
RELEASE, OPERATOR_NS = "sft", "sft-system"
# The chart's full name for the release: its leader-election Lease (two replicas, one leads).
OPERATOR_LEASE = f"{RELEASE}-sft-operator"
OPERATOR_CONTAINER = "operator"  # the chart's Deployment
OPERATOR_READY_TIMEOUT_S = 180.0
OPERATOR_SETTLE_S = 5.0
# The claim the demo job (examples/sftjob-tiny-cpu.yaml) reads its model and data from.
ASSETS_CLAIM = "tiny-assets"


def _run(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def copy_as_root_writes(source: Path, target: Path) -> None:
    """Copy the files below ``source`` into the existing directory ``target`` the way root writes
    new files (umask 022: directories 0755, files 0644, root's; the source's modes are not kept:
    safetensors saves its file 0600). ``target`` itself is left as it is."""
    with root_umask():
        for path in sorted(source.rglob("*")):
            dest = target / path.relative_to(source)
            if path.is_dir():
                dest.mkdir(exist_ok=True)
            else:
                shutil.copyfile(path, dest)


class RealStack:
    def __init__(
        self,
        state_dir: Path | str,
        on_step: Callable[[str], None] = lambda _msg: None,
        helm_set: Sequence[str] = (),
        helm_set_string: Sequence[str] = (),
    ):
        """``helm_set``: extra ``--set KEY=VALUE`` for the chart; ``helm_set_string``: extra
        ``--set-string KEY=VALUE`` (e.g. an env value that looks like a number)."""
        self.state_dir = Path(state_dir).resolve()
        self.helm_set = list(helm_set)
        self.helm_set_string = list(helm_set_string)
        self.on_step = on_step
        self.cp: ControlPlane | None = None
        self.node: RealNode | None = None
        self.images: dict[str, str] = {}
        self.times: dict[str, float] = {}
        self.operator_pod = ""
        self._api: Any = None
        self.attached = False  # attach(): another process started it and stops it

    def connection(self) -> dict[str, Any]:
        """What another process needs to use this running stack (attach()): its state dir, API
        server and admin token, images. A test credential, for a root-only temp dir."""
        assert self.cp is not None
        return {
            "state_dir": str(self.state_dir),
            "server": self.cp.server,
            "admin_token": self.cp.admin_token,
            "images": self.images,
            "operator_pod": self.operator_pod,
        }

    @classmethod
    def attach(cls, connection: dict[str, Any], on_step: Callable[[str], None] = lambda _msg: None) -> "RealStack":
        """The stack another process started and runs (its connection()): its API, kubectl and
        docker, nothing started; stop() only closes this process's client."""
        stack = cls(connection["state_dir"], on_step=on_step)
        cp = ControlPlane(stack.state_dir / "controlplane")
        cp.server, cp.admin_token = connection["server"], connection["admin_token"]
        stack.cp, stack.images, stack.attached = cp, dict(connection["images"]), True
        stack.operator_pod = stack.leader_pod() or connection["operator_pod"]
        return stack

    @property
    def kubeconfig(self) -> Path:
        assert self.cp is not None
        return self.cp.kubeconfig

    def kubectl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return _run(["kubectl", f"--kubeconfig={self.kubeconfig}", *args], timeout)

    def api_client(self) -> Any:
        assert self.cp is not None
        if self._api is None:
            self._api = self.cp.api_client()
        return self._api

    def _timed(self, what: str, started: float) -> None:
        self.times[what] = time.monotonic() - started
        self.on_step(f"{what}: {self.times[what]:.1f}s")

    def start(self) -> "RealStack":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        t = time.monotonic()
        self.on_step("starting the local control plane (etcd, kube-apiserver, kube-controller-manager)")
        self.cp = ControlPlane(self.state_dir / "controlplane", advertise_address=host_ip())
        try:
            self.cp.start()
        except ControlPlaneError as e:
            raise StackError(f"control plane: {e.summary}") from None
        self._timed("control plane up", t)
        t = time.monotonic()
        self.on_step("starting the real node (dockerd, kubelet, kube-proxy, CNI, dev DNS, local volumes)")
        self.node = RealNode(self.cp.kubeconfig, self.state_dir / "node")
        try:
            self.node.start()
        except NodeError as e:
            raise StackError(f"real node: {e.summary}") from None
        self._timed("node Ready", t)
        t = time.monotonic()
        self.on_step("building the images (scripts/build-images.sh; docker's cache makes a rebuild quick)")
        proc = _run(
            ["bash", str(ROOT / "scripts" / "build-images.sh")], timeout=3600, env={**os.environ, "DOCKER": DOCKER}
        )
        if proc.returncode != 0:
            raise StackError(f"scripts/build-images.sh failed: {_last_line(proc.stderr)}")
        self.images = dict(line.split("=", 1) for line in proc.stdout.split() if "=" in line)
        for key in ("SFT_OPERATOR_IMAGE", "SFT_TRAINER_IMAGE"):
            if key not in self.images:
                raise StackError(f"scripts/build-images.sh printed no {key}=")
        self._timed("images", t)
        t = time.monotonic()
        self._helm_install()
        self._wait_operator()
        self._timed("operator pod Ready (helm install)", t)

    def _helm_install(self) -> None:
        proc = _run(["bash", str(ROOT / "scripts" / "provision-helm.sh")], timeout=600)
        if proc.returncode != 0 or not proc.stdout.strip():
            raise StackError(f"scripts/provision-helm.sh failed: {_last_line(proc.stderr)}")
        helm = proc.stdout.strip().splitlines()[-1]
        home = self.state_dir / "helm"
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        repo, _, tag = self.images["SFT_OPERATOR_IMAGE"].rpartition(":")
        sets = [f"image.repository={repo}", f"image.tag={tag}", *self.helm_set]
        self.on_step(
            f"helm install {RELEASE} charts/sft-operator -n {OPERATOR_NS} "
            + " ".join(f"--set {v}" for v in sets)
            + "".join(f" --set-string {v}" for v in self.helm_set_string)
        )
        # --server-side=false: a 1.20 apiserver's OpenAPI does not know the CRD's CEL rules.
        proc = _run(
            [
                helm,
                "install",
                RELEASE,
                str(CHART),
                "--namespace",
                OPERATOR_NS,
                "--create-namespace",
                "--server-side=false",
                *(a for v in sets for a in ("--set", v)),
                *(a for v in self.helm_set_string for a in ("--set-string", v)),
            ],
            timeout=180,
            env=env,
        )
        if proc.returncode != 0:
            raise StackError(f"helm install failed: {_last_line(proc.stderr)}")

    def _wait_operator(self) -> None:
        import kubernetes

        core = kubernetes.client.CoreV1Api(self.api_client())
        deadline = time.monotonic() + OPERATOR_READY_TIMEOUT_S
        ready_since: dict[str, float] = {}
        while time.monotonic() < deadline:
            for p in core.list_namespaced_pod(OPERATOR_NS).items:
                statuses = p.status.container_statuses or []
                crashed = [c for c in statuses if c.restart_count > 0 or (c.state.terminated is not None)]
                if crashed:
                    c = crashed[0]
                    last = self.kubectl(
                        "-n",
                        OPERATOR_NS,
                        "logs",
                        p.metadata.name,
                        "-c",
                        c.name,
                        *(("--previous",) if c.restart_count else ()),
                        "--tail=5",
                    ).stdout.strip()
                    raise StackError(
                        f"the operator container {p.metadata.name}/{c.name} exited "
                        f"(restarts {c.restart_count}): {_last_line(last)}"
                    )
                if p.status.phase == "Running" and statuses and all(c.ready for c in statuses):
                    # Ready and still running 5 s later: the operator got past its start-up.
                    since = ready_since.setdefault(p.metadata.name, time.monotonic())
                    if time.monotonic() - since >= OPERATOR_SETTLE_S:
                        # The replica that acts (the other stands by), or this one without election.
                        self.operator_pod = self.leader_pod() or p.metadata.name
                        return
            time.sleep(1.0)
        described = self.kubectl("-n", OPERATOR_NS, "describe", "pods").stdout[-3000:]
        raise StackError(f"the operator pod was not Ready after {OPERATOR_READY_TIMEOUT_S:.0f}s:\n{described}")

    def leader_pod(self) -> str:
        """The operator pod holding the leader-election Lease ('' while none does, or without
        leader election). The holder identity is the pod's name and a random part."""
        import kubernetes
        from kubernetes.client.exceptions import ApiException

        try:
            lease = kubernetes.client.CoordinationV1Api(self.api_client()).read_namespaced_lease(
                OPERATOR_LEASE, OPERATOR_NS
            )
        except ApiException as e:
            if e.status == 404:
                return ""
            raise
        holder = lease.spec.holder_identity or ""
        return holder.rsplit("_", 1)[0]

    def operator_log(self, tail: int = 80) -> str:
        """Every operator replica's log (the leader's first), each under its pod's name."""
        import kubernetes

        if self.cp is None:
            return "(no operator pod)"
        pods = sorted(
            p.metadata.name
            for p in kubernetes.client.CoreV1Api(self.api_client())
            .list_namespaced_pod(OPERATOR_NS, label_selector=f"app.kubernetes.io/instance={RELEASE}")
            .items
        )
        if not pods:
            return "(no operator pod)"
        leader = self.leader_pod()
        pods.sort(key=lambda name: name != leader)
        return "\n".join(
            f"--- {name}{' (leader)' if name == leader else ''} ---\n"
            + self.kubectl("-n", OPERATOR_NS, "logs", name, f"--tail={tail}").stdout
            for name in pods
        )

    def job_manifest(self, name: str, namespace: str, cpu: str = "500m") -> dict[str, Any]:
        """The demo job (examples/sftjob-tiny-cpu.yaml) for this node: its model and data on the
        claim ASSETS_CLAIM of ``namespace`` (fill_claim), the trainer image built here, ``cpu``
        requested per pod (two pods and their reporters share a small machine)."""
        from devtools.demo import demo_manifest

        manifest = demo_manifest()
        manifest["metadata"] = {"name": name, "namespace": namespace}
        manifest["spec"]["pod"]["image"] = self.images["SFT_TRAINER_IMAGE"]
        manifest["spec"]["pod"]["resources"] = {"requests": {"cpu": cpu, "memory": "1Gi"}}
        return manifest

    def fill_claim(
        self,
        namespace: str,
        claim: str,
        source: Path,
        size: str = "1Gi",
        access_modes: Sequence[str] = ("ReadOnlyMany",),
    ) -> Path:
        """A new claim holding the files below ``source``, as a cluster user loads a model and data
        onto a fresh volume before the jobs that read it: created, bound to a `local` volume of the
        node's provisioner (a root-owned 0755 directory), then filled as root writes files
        (copy_as_root_writes). Pods read it with the claim mounted readOnly (the kubelet then
        changes no ownership). Returns the claim's host directory."""
        import kubernetes

        kubernetes.client.CoreV1Api(self.api_client()).create_namespaced_persistent_volume_claim(
            namespace,
            {
                "metadata": {"name": claim},
                "spec": {"accessModes": list(access_modes), "resources": {"requests": {"storage": size}}},
            },
        )
        target = self.claim_dir(namespace, claim)
        copy_as_root_writes(source, target)
        self.on_step(f"claim {namespace}/{claim} filled from {source} ({target})")
        return target

    def claim_dir(self, namespace: str, claim: str, timeout_s: float = 60.0) -> Path:
        """The host directory behind a claim (claim -> its bound PV -> spec.local.path, a volume
        of the node's provisioner); waits (bounded) until the claim is bound."""
        import kubernetes
        from kubernetes.client.exceptions import ApiException

        core = kubernetes.client.CoreV1Api(self.api_client())
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                pvc = core.read_namespaced_persistent_volume_claim(claim, namespace)
            except ApiException as e:
                if e.status != 404:
                    raise
                pvc = None
            if pvc is not None and pvc.status.phase == "Bound" and pvc.spec.volume_name:
                pv = core.read_persistent_volume(pvc.spec.volume_name)
                if pv.spec.local is None:
                    raise StackError(f"claim {namespace}/{claim}: volume {pv.metadata.name} is not a local volume")
                return Path(pv.spec.local.path)
            if time.monotonic() >= deadline:
                state = "absent" if pvc is None else pvc.status.phase
                raise StackError(f"claim {namespace}/{claim} not bound after {timeout_s:.0f}s ({state})")
            time.sleep(0.5)

    def _operator_container(self) -> tuple[int, str]:
        """(restart count, container id) of the operator pod's container, from the pod's status."""
        import kubernetes

        pod = kubernetes.client.CoreV1Api(self.api_client()).read_namespaced_pod(self.operator_pod, OPERATOR_NS)
        for c in pod.status.container_statuses or []:
            if c.name == OPERATOR_CONTAINER:
                return c.restart_count, (c.container_id or "") if c.ready and c.state.running else ""
        return 0, ""

    def kill_operator(self, timeout_s: float = OPERATOR_READY_TIMEOUT_S) -> float:
        """SIGKILL the operator (its container, found by dockershim's labels: no clean-up, as an
        OOM kill does), then wait until the kubelet has restarted it and it is Ready again.
        Returns the seconds from the kill to Ready. The replica killed is the leader (the one
        acting); the standby takes over meanwhile and is operator_pod afterwards."""
        self.operator_pod = self.leader_pod() or self.operator_pod
        restarts, _ = self._operator_container()
        ids = docker(
            "ps",
            "-q",
            "--filter",
            f"label=io.kubernetes.pod.namespace={OPERATOR_NS}",
            "--filter",
            f"label=io.kubernetes.pod.name={self.operator_pod}",
            "--filter",
            f"label=io.kubernetes.container.name={OPERATOR_CONTAINER}",
        ).stdout.split()
        if len(ids) != 1:
            raise StackError(f"expected one running operator container in {self.operator_pod}, docker ps says {ids}")
        killed = time.monotonic()
        proc = docker("kill", "--signal", "KILL", ids[0])
        if proc.returncode != 0:
            raise StackError(f"docker kill of the operator failed: {_last_line(proc.stderr)}")
        while time.monotonic() - killed < timeout_s:
            count, running = self._operator_container()
            if count > restarts and running:
                took = time.monotonic() - killed
                self.operator_pod = self.leader_pod() or self.operator_pod
                return took
            time.sleep(0.5)
        raise StackError(
            f"the operator was not restarted and Ready {timeout_s:.0f}s after SIGKILL:\n"
            + self.kubectl("-n", OPERATOR_NS, "describe", "pod", self.operator_pod).stdout[-3000:]
        )

    def pod_container(self, namespace: str, pod: str, container: str) -> str:
        """The docker id of a pod's running container (dockershim's labels)."""
        ids = docker(
            "ps",
            "-q",
            "--filter",
            f"label=io.kubernetes.pod.namespace={namespace}",
            "--filter",
            f"label=io.kubernetes.pod.name={pod}",
            "--filter",
            f"label=io.kubernetes.container.name={container}",
        ).stdout.split()
        if len(ids) != 1:
            raise StackError(f"expected one running container {container} in {namespace}/{pod}, docker ps says {ids}")
        return ids[0]

    @staticmethod
    def container_pids(container_id: str) -> list[int]:
        """Every process of a container as host PIDs (root, in the host's PID namespace), e.g. to
        SIGSTOP a whole rank as a hung collective would leave it."""
        proc = docker("top", container_id, "-eo", "pid")
        if proc.returncode != 0:
            raise StackError(f"docker top {container_id}: {_last_line(proc.stderr)}")
        return [int(pid) for pid in proc.stdout.split()[1:] if pid.isdigit()]

    def claim_dirs(self) -> list[Path]:
        """The directories of this cluster's claims (the node's provisioner's `local` volumes)."""
        import kubernetes

        if self.cp is None:
            return []
        try:
            pvs = kubernetes.client.CoreV1Api(self.api_client()).list_persistent_volume().items
        except Exception:  # the control plane is gone: nothing to list
            return []
        return [
            Path(pv.spec.local.path)
            for pv in pvs
            if pv.spec.local and (pv.metadata.annotations or {}).get(ANN_PROVISIONED_BY) == PROVISIONER
        ]

    def stop(self, remove_claim_dirs: bool = True) -> None:
        if self.attached:  # the process that started it stops it
            if self._api is not None:
                self._api.close()
                self._api = None
            self.cp = None
            return
        dirs = self.claim_dirs() if remove_claim_dirs else []
        if self.node is not None:
            self.node.stop()
            self.node = None
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
        if self._api is not None:
            self._api.close()
            self._api = None
        if self.cp is not None:
            self.cp.stop()
            self.cp = None
