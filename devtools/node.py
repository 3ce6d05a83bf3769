"""A real local node for the local control plane (dev/test only): dockerd, kube-scheduler, kubelet
1.20 (dockershim), kube-proxy (iptables), CNI bridge networking, a dev-only cluster DNS and a
dev-only provisioner of `local` volumes (devtools.local_provisioner: the default StorageClass
``local-dir``, root-owned directories under ``<state_dir>/local-volumes``), all on this machine,
as root. Pods run in real containers from local images, in their own network namespaces (pod CIDR
10.244.0.0/24, on this machine only).

    cp = ControlPlane(advertise_address=host_ip()).start()
    with RealNode(cp.kubeconfig) as node:   # Ready, untainted
        ...

CLI (the Makefile's node-up / node-down):

    python -m devtools.node up --kubeconfig .local/kubeconfig --state-dir .local/realnode
    python -m devtools.node down --state-dir .local/realnode

Like controlplane.py: each process in its own process group, bounded waits, logs in
``<state_dir>/logs``, a one-line error naming what is missing. stop() ends the node processes,
removes the containers of its pods, kube-proxy's rules, the bridge and the kubelet's mounts, and
stops dockerd if this node started it (``keep_dockerd`` leaves it). The sandbox workarounds
(docs/realnode.md): dockerd's default runtime is scripts/runc-clamp-oom (no CAP_SYS_RESOURCE
here: negative oom_score_adj clamped to 0), and the node.kubernetes.io/not-ready taint is removed
once the node is Ready (the controller that would remove it, nodelifecycle, is off).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from devtools.controlplane import _REAPER_SOURCE, pid_alive, tail_lines, terminate_group

ROOT = Path(__file__).resolve().parents[1]
NODE_BIN_ENV = "SFT_NODE_BIN"
DEFAULT_NODE_BIN = Path.home() / ".cache" / "sft-operator" / "k8s-1.20.2-node" / "bin"
TIMEOUT_ENV = "SFT_NODE_TIMEOUT"
DEFAULT_TIMEOUT_S = 90.0
DOCKER = "/usr/bin/docker"  # Debian's 20.10 CLI; a newer static CLI may come first in PATH
DOCKERD = "dockerd"
RUNC_WRAPPER = ROOT / "scripts" / "runc-clamp-oom"
PAUSE_SCRIPT = ROOT / "scripts" / "build-pause-image.sh"
RUNTIME_NAME = "sft-runc"
PAUSE_IMAGE = "sft-local/pause:3.4"
POD_CIDR = "10.244.0.0/24"
GATEWAY = "10.244.0.1"  # the bridge's address: the host as seen from pods (DNS listens there)
BRIDGE = "sftbr0"
CNI_BIN_DIR = Path("/usr/lib/cni")
KUBELET_PORT = 10250
STATE_FILE = "node.json"
# One real node per machine (kubelet's port 10250, the bridge, iptables, DNS on :53): a second
# start (another test run, a benchmark, `make demo`) waits for the first to stop, then goes on.
MACHINE_LOCK = Path("/run/sft-operator-realnode.lock")
LOCK_WAIT_ENV = "SFT_NODE_LOCK_WAIT_S"
DEFAULT_LOCK_WAIT_S = 3600.0
SCHEDULER, KUBELET, PROXY, DNS = "kube-scheduler", "kubelet", "kube-proxy", "dns"
PROVISIONER = "local-provisioner"
LOCAL_VOLUMES_DIR = "local-volumes"  # under the state dir: the provisioner's claim directories
NODE_BINARIES = (SCHEDULER, KUBELET, PROXY)
STOP_ORDER = (DNS, PROVISIONER, PROXY, KUBELET, SCHEDULER)


UNIX_SOCKET_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes, NUL included


class NodeError(RuntimeError):
    """A one-line reason, plus the log tail of the process to blame when there is one."""

    def __init__(self, summary: str, log_file: Path | None = None):
        self.summary = summary
        self.log_file = log_file
        tail = tail_lines(log_file) if log_file else []
        super().__init__(summary + ("".join(f"\n  | {line}" for line in tail) if tail else ""))


def host_ip() -> str:
    """This machine's primary non-loopback IPv4 (the source address of its default route)."""
    try:
        out = subprocess.run(
            ["ip", "-4", "route", "get", "1.1.1.1"], capture_output=True, text=True, timeout=5
        ).stdout.split()
        if "src" in out:
            return out[out.index("src") + 1]
    except (OSError, subprocess.TimeoutExpired):
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent
        ip = s.getsockname()[0]
    if ip.startswith("127."):
        raise NodeError("no non-loopback IPv4 address on this machine: pods could not reach the API server")
    return ip


def docker(*args: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NodeError(f"docker {' '.join(args)} failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
    return proc


def docker_running() -> bool:
    try:
        return docker("info", "--format", "{{.ID}}", timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def kubelet_config(state: Path, cgroup_driver: str) -> dict[str, Any]:
    """The kubelet's config: anonymous + AlwaysAllow on loopback only (the local apiserver calls
    kubelets without a client certificate), relaxed eviction, no swap check."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": "127.0.0.1",
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_PORT - 2,
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": cgroup_driver,
        "cgroupsPerQOS": True,
        "enforceNodeAllocatable": ["pods"],
        "failSwapOn": False,
        "clusterDomain": "cluster.local",
        "clusterDNS": [GATEWAY],
        "resolvConf": str(state / "resolv.conf"),
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "maxPods": 60,
        "syncFrequency": "10s",
        "fileCheckFrequency": "5s",
        "nodeStatusUpdateFrequency": "5s",
    }


def cni_config(state: Path) -> dict[str, Any]:
    return {
        "cniVersion": "0.4.0",
        "name": "sft-pods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(state / "cni-ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "firewall", "backend": "iptables"},
        ],
    }


class RealNode:
    """See the module docstring. ``state_dir`` None: a temp dir, removed on stop."""

    def __init__(
        self,
        kubeconfig: Path | str,
        state_dir: Path | str | None = None,
        *,
        node_name: str | None = None,
        bin_dir: Path | str | None = None,
        timeout_s: float | None = None,
        dns: bool = True,
        keep_dockerd: bool = False,
        detached: bool = False,
    ):
        self.kubeconfig = Path(kubeconfig).resolve()
        self._owns_state_dir = state_dir is None
        self.state_dir = Path(state_dir or tempfile.mkdtemp(prefix="sft-realnode-")).resolve()
        # The apiserver reaches the kubelet by the node's hostname (resolves to this machine).
        self.node_name = node_name or socket.gethostname().lower()
        self.bin_dir = Path(bin_dir or os.environ.get(NODE_BIN_ENV) or DEFAULT_NODE_BIN)
        self.timeout_s = timeout_s if timeout_s is not None else float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
        self.dns = dns
        self.keep_dockerd = keep_dockerd
        self.detached = detached
        self.log_dir = self.state_dir / "logs"
        self.pids: dict[str, int] = {}
        self.started_dockerd = False
        self.timings: dict[str, float] = {}
        self._reaper: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "RealNode":
        return self.start()

    @property
    def volumes_dir(self) -> Path:
        """Where the node's provisioner puts claim directories (kept by stop(), like the data of
        a node's disks; RealStack.stop removes its claims' ones)."""
        return self.state_dir / LOCAL_VOLUMES_DIR

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- start --

    def start(self) -> "RealNode":
        started = time.monotonic()
        # Before anything is started: a refusal (e.g. a node already runs from this state dir)
        # must not tear down what runs.
        self._preflight()
        self._lock_machine()
        self._started = True
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.log_dir.mkdir(exist_ok=True)
            if not self.detached:
                atexit.register(self.stop)
                self._reaper = subprocess.Popen(
                    [sys.executable, "-c", _REAPER_SOURCE],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            cgroup_driver = self._ensure_dockerd()
            self.timings["dockerd"] = time.monotonic() - started
            if docker("image", "inspect", PAUSE_IMAGE).returncode != 0:
                proc = subprocess.run(
                    ["bash", str(PAUSE_SCRIPT), PAUSE_IMAGE],
                    capture_output=True,
                    text=True,
                    timeout=300,
                    env={**os.environ, "DOCKER": DOCKER},
                )
                if proc.returncode != 0:
                    raise NodeError(
                        f"no docker image {PAUSE_IMAGE} (the pod sandbox) and {PAUSE_SCRIPT.name} "
                        f"failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}"
                    )
            self._write_configs(cgroup_driver)
            if self.dns:
                self._spawn(
                    DNS,
                    [sys.executable, "-m", "devtools.node_dns", "--kubeconfig", str(self.kubeconfig), "--port", "53"],
                )
            # Before any claim can be made through this node: the default StorageClass is its.
            self._spawn(
                PROVISIONER,
                [
                    sys.executable,
                    "-m",
                    "devtools.local_provisioner",
                    "--kubeconfig",
                    str(self.kubeconfig),
                    "--node-name",
                    self.node_name,
                    "--root",
                    str(self.volumes_dir),
                ],
            )
            self._spawn(
                SCHEDULER,
                [
                    str(self.bin_dir / SCHEDULER),
                    f"--kubeconfig={self.kubeconfig}",
                    "--leader-elect=false",
                    "--port=0",
                    "--secure-port=0",
                    "--v=1",
                ],
            )
            s = self.state_dir
            self._spawn(
                KUBELET,
                [
                    str(self.bin_dir / KUBELET),
                    f"--kubeconfig={self.kubeconfig}",
                    f"--config={s / 'kubelet-config.yaml'}",
                    f"--hostname-override={self.node_name}",
                    "--container-runtime=docker",
                    f"--pod-infra-container-image={PAUSE_IMAGE}",
                    "--network-plugin=cni",
                    f"--cni-conf-dir={s / 'cni' / 'net.d'}",
                    f"--cni-bin-dir={CNI_BIN_DIR}",
                    f"--root-dir={s / 'kubelet'}",
                    f"--experimental-dockershim-root-directory={s / 'dockershim'}",
                    f"--volume-plugin-dir={s / 'volume-plugins'}",
                    f"--cert-dir={s / 'kubelet' / 'pki'}",
                    "--register-node=true",
                    "--v=1",
                ],
            )
            self._spawn(
                PROXY,
                [
                    str(self.bin_dir / PROXY),
                    f"--kubeconfig={self.kubeconfig}",
                    f"--hostname-override={self.node_name}",
                    "--proxy-mode=iptables",
                    f"--cluster-cidr={POD_CIDR}",
                    "--conntrack-max-per-core=0",
                    "--metrics-bind-address=127.0.0.1:10249",
                    "--healthz-bind-address=127.0.0.1:10256",
                    "--v=1",
                ],
            )
            self._write_state()
            self._wait_ready()
            self.timings["ready"] = time.monotonic() - started
            self._untaint()
        except BaseException:
            self.stop()
            raise
        self.timings["started"] = time.monotonic() - started
        return self

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise NodeError("the real node needs root (dockerd, kubelet, iptables, the CNI bridge)")
        for name in NODE_BINARIES:
            if not os.access(self.bin_dir / name, os.X_OK):
                raise NodeError(
                    f"no executable {name} in {self.bin_dir}: build kubelet, kube-scheduler and "
                    f"kube-proxy v1.20.2 (make WHAT='cmd/kubelet cmd/kube-scheduler cmd/kube-proxy' in "
                    f"the Kubernetes source) into it, or set {NODE_BIN_ENV} (docs/realnode.md)"
                )
        if not Path(DOCKER).is_file():
            raise NodeError(f"no {DOCKER}: install Debian's docker.io (apt-get install docker.io)")
        for plugin in ("bridge", "host-local", "portmap", "firewall"):
            if not (CNI_BIN_DIR / plugin).is_file():
                raise NodeError(f"no CNI plugin {CNI_BIN_DIR / plugin}: apt-get install containernetworking-plugins")
        for tool in ("iptables", "ip"):
            if not shutil.which(tool):
                raise NodeError(f"no {tool} in PATH: apt-get install iptables iproute2")
        # The kubelet binds unix sockets under its root dir (pod-resources/<10 digits>): a path
        # past the kernel's 107 bytes makes it exit at start with only "bind: invalid argument".
        socket_path = self.state_dir.resolve() / "kubelet" / "pod-resources" / ("0" * 10)
        if len(os.fsencode(socket_path)) > UNIX_SOCKET_PATH_MAX:
            raise NodeError(
                f"state dir {self.state_dir} is too deep: the kubelet's sockets under it "
                f"({socket_path}) would pass the {UNIX_SOCKET_PATH_MAX}-byte limit of a unix "
                f"socket path; use a shorter state dir"
            )
        state = _read_state(self.state_dir)
        if state and any(_alive(state, n) for n in STOP_ORDER):
            raise NodeError(
                f"a real node already runs from {self.state_dir} (stop it: "
                f"python -m devtools.node down --state-dir {self.state_dir})"
            )

    def _lock_machine(self) -> None:
        """Hold MACHINE_LOCK while this node runs (released by stop, or by the kernel when the
        process dies); wait for another node to stop, bounded, saying so once."""
        import fcntl

        wait_s = float(os.environ.get(LOCK_WAIT_ENV, DEFAULT_LOCK_WAIT_S))
        fd = os.open(MACHINE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        deadline, said = time.monotonic() + wait_s, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise NodeError(
                        f"another real node runs on this machine (pid {holder}, {MACHINE_LOCK}) "
                        f"and did not stop within {wait_s:.0f}s ({LOCK_WAIT_ENV})"
                    ) from None
                if not said:
                    print(
                        f"realnode: another real node runs on this machine (pid {holder}); waiting for it "
                        f"to stop (up to {wait_s:.0f}s)",
                        file=sys.stderr,
                        flush=True,
                    )
                    said = True
                time.sleep(2.0)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _unlock_machine(self) -> None:
        fd = getattr(self, "_lock_fd", None)
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _ensure_dockerd(self) -> str:
        """Start dockerd with the runc wrapper as its default runtime unless one runs; return
        its cgroup driver."""
        if docker_running():
            runtime = docker("info", "--format", "{{.DefaultRuntime}}").stdout.strip()
            if runtime != RUNTIME_NAME:
                raise NodeError(
                    f"a dockerd runs with default runtime {runtime!r}, not {RUNTIME_NAME}: pod sandboxes would fail "
                    f"here (negative oom_score_adj); stop it, or start it with --add-runtime={RUNTIME_NAME}="
                    f"{RUNC_WRAPPER} --default-runtime={RUNTIME_NAME}"
                )
        else:
            if not shutil.which(DOCKERD):
                raise NodeError("no dockerd: apt-get install docker.io")
            self._spawn(
                DOCKERD,
                [
                    DOCKERD,
                    "--storage-driver=overlay2",
                    f"--add-runtime={RUNTIME_NAME}={RUNC_WRAPPER}",
                    f"--default-runtime={RUNTIME_NAME}",
                ],
            )
            self.started_dockerd = True
            self._write_state()
            self._wait("dockerd answers", lambda: (docker_running(), "docker info fails"), DOCKERD)
        return docker("info", "--format", "{{.CgroupDriver}}", check=True).stdout.strip() or "cgroupfs"

    def _write_configs(self, cgroup_driver: str) -> None:
        s = self.state_dir
        for d in ("cni/net.d", "cni-ipam", "kubelet", "dockershim", "volume-plugins"):
            (s / d).mkdir(parents=True, exist_ok=True)
        (s / "cni" / "net.d" / "10-sft-bridge.conflist").write_text(json.dumps(cni_config(s), indent=2))
        (s / "kubelet-config.yaml").write_text(yaml.safe_dump(kubelet_config(s, cgroup_driver), sort_keys=False))
        # Pods with dnsPolicy Default get this: no upstream resolver here, so ours.
        (s / "resolv.conf").write_text(f"nameserver {GATEWAY}\n")

    def _spawn(self, name: str, argv: list[str]) -> None:
        log_file = self.log_dir / f"{name}.log"
        with log_file.open("ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
            log.flush()
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(
                p
                for p in [
                    *(str(ROOT / d) for d in ("core", "operator", "client", "trainer-image")),
                    str(ROOT),
                    env.get("PYTHONPATH", ""),
                ]
                if p
            )
            try:
                popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=self.state_dir,
                    env=env,
                )
            except OSError as e:
                raise NodeError(f"cannot start {name}: {e}") from None
        self.pids[name] = popen.pid
        self._popens = getattr(self, "_popens", {})
        self._popens[name] = popen
        if self._reaper is not None and self._reaper.stdin is not None:
            self._reaper.stdin.write(f"pid {popen.pid}\n".encode())
            self._reaper.stdin.flush()

    def check(self) -> None:
        for name, pid in self.pids.items():
            popen = getattr(self, "_popens", {}).get(name)
            dead = popen.poll() is not None if popen is not None else not pid_alive(pid)
            if dead:
                raise NodeError(
                    f"{name} (pid {pid}) exited (log: {self.log_dir / (name + '.log')})", self.log_dir / f"{name}.log"
                )

    def _wait(self, what: str, ready: Callable[[], tuple[bool, str]], blame: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        last = ""
        while True:
            self.check()
            ok, last = ready()
            if ok:
                return
            if time.monotonic() > deadline:
                raise NodeError(
                    f"timed out after {self.timeout_s:.0f}s waiting until {what} (last: {last}); "
                    f"set {TIMEOUT_ENV} to wait longer",
                    self.log_dir / f"{blame}.log",
                )
            time.sleep(0.25)

    def _core(self) -> Any:
        import kubernetes

        if not hasattr(self, "_api"):
            self._api = kubernetes.config.new_client_from_config(str(self.kubeconfig))
        return kubernetes.client.CoreV1Api(self._api)

    def node(self) -> Any:
        return self._core().read_node(self.node_name)

    def _wait_ready(self) -> None:
        import datetime

        from kubernetes.client.exceptions import ApiException

        # A kept control plane may still hold the Node's status from an earlier run: only a
        # heartbeat from this kubelet counts.
        since = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=2)

        def ready() -> tuple[bool, str]:
            try:
                node = self.node()
            except ApiException as e:
                return False, f"HTTP {e.status}"
            for c in node.status.conditions or []:
                if c.type == "Ready":
                    fresh = c.last_heartbeat_time is not None and c.last_heartbeat_time >= since
                    return (
                        c.status == "True" and fresh,
                        f"Ready={c.status} (heartbeat {c.last_heartbeat_time}): {c.message}",
                    )
            return False, "no Ready condition yet"

        self._wait(f"node {self.node_name} is Ready", ready, KUBELET)

    def _untaint(self) -> None:
        """Remove node.kubernetes.io/not-ready (the kubelet registers with it; nodelifecycle, which
        would remove it, is disabled in the local controller-manager)."""
        node = self.node()
        taints = [t.to_dict() for t in node.spec.taints or [] if t.key != "node.kubernetes.io/not-ready"]
        taints = [{k: v for k, v in t.items() if v is not None} for t in taints]
        self._core().patch_node(
            self.node_name,
            [{"op": "replace", "path": "/spec/taints", "value": taints}] if node.spec.taints else {"spec": {}},
        )

    def _write_state(self) -> None:
        (self.state_dir / STATE_FILE).write_text(
            json.dumps(
                {
                    "pids": self.pids,
                    "started_dockerd": self.started_dockerd,
                    "node": self.node_name,
                    "kubeconfig": str(self.kubeconfig),
                    "bin_dir": str(self.bin_dir),
                },
                indent=2,
            )
        )

    # -- stop --

    def stop(self) -> None:
        """Idempotent: end the node processes, remove its pods' containers and its network and
        mount leftovers, stop dockerd if started here (unless keep_dockerd)."""
        atexit.unregister(self.stop)
        if not getattr(self, "_started", False):
            return
        self._started = False
        stop_node(self.state_dir, self.pids, self.bin_dir, self.started_dockerd and not self.keep_dockerd)
        self.pids = {}
        for popen in getattr(self, "_popens", {}).values():
            try:
                popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._popens = {}
        if self._reaper is not None:
            try:
                assert self._reaper.stdin is not None
                self._reaper.stdin.write(b"done\n")
                self._reaper.stdin.close()
                self._reaper.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self._reaper.kill()
            self._reaper = None
        if hasattr(self, "_api"):
            self._api.close()
            del self._api
        if self._owns_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        self._unlock_machine()


def _read_state(state_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((state_dir / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _alive(state: dict[str, Any], name: str) -> bool:
    pid = state.get("pids", {}).get(name)
    return bool(pid) and pid_alive(pid)


def stop_node(state_dir: Path, pids: dict[str, int], bin_dir: Path, stop_dockerd: bool) -> None:
    for name in STOP_ORDER:
        if name in pids:
            terminate_group(pids[name], grace_s=10.0)
    if docker_running():
        ids = docker("ps", "-aq", "--filter", "label=io.kubernetes.pod.name").stdout.split()
        if ids:
            docker("rm", "-f", *ids, timeout=120)
    proxy = bin_dir / PROXY
    if os.access(proxy, os.X_OK):
        subprocess.run([str(proxy), "--cleanup"], capture_output=True, timeout=60)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, timeout=10)
    shutil.rmtree(state_dir / "cni-ipam", ignore_errors=True)
    # Volume mounts of pods the kubelet had no time to clean up, deepest first.
    try:
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        mounts = []
    for m in sorted((m for m in mounts if m.startswith(str(state_dir) + "/")), reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True, timeout=10)
    if stop_dockerd and DOCKERD in pids:
        terminate_group(pids[DOCKERD], grace_s=20.0)
    (state_dir / STATE_FILE).unlink(missing_ok=True)


# --- CLI: detached up / down -------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.node", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--kubeconfig", type=Path, default=Path(".local/kubeconfig"))
    parser.add_argument("--state-dir", type=Path, default=Path(".local/realnode"))
    parser.add_argument("--stop-dockerd", action="store_true", help="down: also stop a dockerd that `up` started")
    args = parser.parse_args(argv)
    state_dir = args.state_dir.resolve()
    try:
        if args.command == "up":
            node = RealNode(args.kubeconfig, state_dir, detached=True, keep_dockerd=True).start()
            print(f"node {node.node_name} Ready in {node.timings['ready']:.1f}s (logs in {node.log_dir})")
            print(f"  stop it: python -m devtools.node down --state-dir {state_dir}")
            return 0
        state = _read_state(state_dir)
        if not state:
            print(f"no real node running from {state_dir}")
            return 0
        stop_node(
            state_dir,
            {n: p for n, p in state["pids"].items() if _alive(state, n)},
            Path(state.get("bin_dir", DEFAULT_NODE_BIN)),
            state.get("started_dockerd", False) and args.stop_dockerd,
        )
        print(f"real node from {state_dir} stopped")
        return 0
    except NodeError as e:
        print(f"node {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
