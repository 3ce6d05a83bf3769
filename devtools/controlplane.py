"""A real local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) for
tests and a newcomer's first run, in the spirit of controller-runtime's envtest.

    with ControlPlane() as cp:          # temp state dir, free loopback ports, fresh PKI
        api = cp.api_client()           # kubernetes.client.ApiClient for the admin
        ...                             # cp.kubeconfig, cp.server, cp.ca_file, cp.admin_token

CLI (the Makefile's cluster-up / cluster-down):

    python -m devtools.controlplane up --state-dir .local
    python -m devtools.controlplane down --state-dir .local

No process outlives its owner by accident: each binary runs in its own process group, stop()
ends the groups (SIGTERM, then SIGKILL), atexit calls stop(), and a tiny reaper process ends
the groups if the owner dies without stopping them (SIGKILL, a crash, an unhandled SIGTERM).
Only the detached CLI `up` leaves them running, with their pids recorded for `down`.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import collections
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from devtools import pki

ASSETS_ENV = "KUBEBUILDER_ASSETS"
TIMEOUT_ENV = "SFT_CONTROLPLANE_TIMEOUT"
DEFAULT_TIMEOUT_S = 90.0
ETCD = "etcd"
APISERVER = "kube-apiserver"
CONTROLLER_MANAGER = "kube-controller-manager"
BINARIES = (ETCD, APISERVER, CONTROLLER_MANAGER)
# Stop in reverse dependency order: nothing writes to etcd once it goes.
STOP_ORDER = (CONTROLLER_MANAGER, APISERVER, ETCD)
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
ADMIN_USER = "sft-admin"
CONTROLLER_MANAGER_USER = "system:kube-controller-manager"
LOG_TAIL_LINES = 15
PORT_ATTEMPTS = 3
STATE_FILE = "controlplane.json"
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
# Metadata of every write, once per request: lets a test attribute writes to a user and a
# namespace exactly (the apiserver's /metrics only count them cluster-wide).
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived", "ResponseStarted", "Panic"],
    "rules": [{"level": "Metadata", "verbs": list(WRITE_VERBS)}, {"level": "None"}],
}
PROVISION_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "provision-k8s.sh"


class ControlPlaneError(RuntimeError):
    """A one-line reason (``summary``) plus, when a process is to blame, its last log lines."""

    def __init__(self, summary: str, log_tail: list[str] | None = None, log_file: Path | None = None):
        self.summary = summary
        self.port_in_use = any("address already in use" in line for line in log_tail or [])
        self.log_tail = log_tail or []
        self.log_file = log_file
        super().__init__(summary)

    def __str__(self) -> str:
        if not self.log_tail:
            return self.summary
        tail = "\n".join(f"  | {line}" for line in self.log_tail)
        return f"{self.summary}\n  last lines of {self.log_file}:\n{tail}"


class ControlPlaneCrashed(ControlPlaneError):
    """A control-plane process exited while it should be running."""


# --- pure helpers ------------------------------------------------------------------------------


def kubeconfig_dict(server: str, ca_pem: bytes, token: str, user: str, namespace: str = "default") -> dict[str, Any]:
    """A self-contained kubeconfig (CA embedded) that authenticates with a bearer token."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "sft-local",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {"name": f"{user}@sft-local", "context": {"cluster": "sft-local", "user": user, "namespace": namespace}}
        ],
        "current-context": f"{user}@sft-local",
    }


def token_file_line(token: str, user: str, uid: str, groups: tuple[str, ...]) -> str:
    """One line of kube-apiserver's --token-auth-file (CSV: token,user,uid,"group1,group2")."""
    return f'{token},{user},{uid},"{",".join(groups)}"'


def diagnose_exit(name: str, log_tail: list[str]) -> str:
    """Why a binary probably exited, from its log, in a few words."""
    text = "\n".join(log_tail)
    if "address already in use" in text:
        return f"{name} could not bind its port (port in use); retry, or free the port"
    for line in reversed(log_tail):
        if line.strip():
            return f"{name}: {line.strip()[:300]}"
    return f"{name} wrote no log"


def tail_lines(path: Path, n: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with path.open("r", errors="replace") as f:
            return [line.rstrip("\n") for line in collections.deque(f, maxlen=n)]
    except FileNotFoundError:
        return []


def fresh_namespace_name(test_name: str) -> str:
    """A fresh, valid namespace name (DNS-1123 label) derived from a test's name."""
    stem = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:48].strip("-") or "test"
    return f"{stem}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class WriteRequest:
    """One write the API server served, from its audit log."""

    verb: str
    resource: str
    subresource: str
    namespace: str
    name: str
    user: str
    user_agent: str
    code: int


def parse_audit_writes(lines: Iterable[str]) -> list[WriteRequest]:
    """The write requests in audit-log JSON lines (other lines and events are ignored)."""
    writes = []
    for line in lines:
        if not line.strip():
            continue
        event = json.loads(line)
        if event.get("verb") not in WRITE_VERBS or event.get("stage") != "ResponseComplete":
            continue
        ref = event.get("objectRef") or {}
        writes.append(
            WriteRequest(
                verb=event["verb"],
                resource=ref.get("resource", ""),
                subresource=ref.get("subresource", ""),
                namespace=ref.get("namespace", ""),
                name=ref.get("name", ""),
                user=(event.get("user") or {}).get("username", ""),
                user_agent=event.get("userAgent", ""),
                code=(event.get("responseStatus") or {}).get("code", 0),
            )
        )
    return writes


def service_endpoints(endpoints: Mapping[str, Any] | None) -> list[tuple[str, int]]:
    """The (address, port) pairs an Endpoints object sends a Service's traffic to (sorted)."""
    pairs = set()
    for subset in (endpoints or {}).get("subsets") or []:
        for address in subset.get("addresses") or []:
            for port in subset.get("ports") or []:
                pairs.add((address.get("ip", ""), int(port.get("port", 0))))
    return sorted(pairs)


def slice_endpoints(endpoint_slice: Mapping[str, Any] | None) -> list[tuple[str, int]]:
    """The same for an EndpointSlice (kube-proxy 1.20 reads slices, not Endpoints)."""
    pairs = set()
    for endpoint in (endpoint_slice or {}).get("endpoints") or []:
        for address in endpoint.get("addresses") or []:
            for port in (endpoint_slice or {}).get("ports") or []:
                pairs.add((address, int(port.get("port", 0))))
    return sorted(pairs)


def kubernetes_service_problem(
    endpoints: Mapping[str, Any] | None, endpoint_slice: Mapping[str, Any] | None, address: str, port: int
) -> str | None:
    """Why pods would not reach this API server through the `kubernetes` Service, or None: its
    Endpoints and EndpointSlice must both say exactly ``address``:``port``."""
    want = [(address, port)]
    found = {"Endpoints": service_endpoints(endpoints), "EndpointSlice": slice_endpoints(endpoint_slice)}
    wrong = {kind: pairs for kind, pairs in found.items() if pairs != want}
    if not wrong:
        return None
    said = "; ".join(f"its {kind} {', '.join(f'{a}:{p}' for a, p in pairs) or 'none'}" for kind, pairs in wrong.items())
    return f"the `kubernetes` Service sends pods to {said}, but the API server serves {address}:{port}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- binaries ----------------------------------------------------------------------------------


def check_assets(assets: Path, source: str) -> Path:
    for name in BINARIES:
        path = assets / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            hint = (
                " (envtest's asset bundles have no kube-controller-manager; add one there)"
                if name == CONTROLLER_MANAGER
                else ""
            )
            raise ControlPlaneError(
                f"{source}: no executable '{name}' in {assets}{hint}; "
                f"unset {ASSETS_ENV} to build the binaries with {PROVISION_SCRIPT.name}"
            )
    return assets


def resolve_assets(env: Mapping[str, str] = os.environ, script: Path = PROVISION_SCRIPT) -> Path:
    """The directory holding etcd, kube-apiserver and kube-controller-manager.

    ``KUBEBUILDER_ASSETS`` when set (envtest's convention), else whatever
    ``scripts/provision-k8s.sh`` prints (it builds them once, then answers from its cache).
    """
    if env.get(ASSETS_ENV):
        return check_assets(Path(env[ASSETS_ENV]), f"{ASSETS_ENV}={env[ASSETS_ENV]}")
    if not script.is_file():
        raise ControlPlaneError(
            f"{ASSETS_ENV} is not set and {script} does not exist; "
            f"set {ASSETS_ENV} to a directory holding {', '.join(BINARIES)}"
        )
    last_lines: collections.deque[str] = collections.deque(maxlen=5)
    # The first run builds for ~10 minutes: pass its progress through, keep the tail for errors.
    proc = subprocess.Popen(
        ["bash", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in env.items() if k != ASSETS_ENV},
    )
    assert proc.stderr is not None and proc.stdout is not None
    for line in proc.stderr:
        sys.stderr.write(line)
        last_lines.append(line.rstrip("\n"))
    out = proc.stdout.read().strip().splitlines()
    if proc.wait() != 0 or not out:
        reason = next((line for line in reversed(last_lines) if line.strip()), "no output")
        raise ControlPlaneError(
            f"provisioning failed ({script.name} exit {proc.returncode}): {reason}; "
            f"run {script} to see the whole log, or set {ASSETS_ENV}"
        )
    return check_assets(Path(out[-1]), script.name)


# --- process groups ----------------------------------------------------------------------------

# Runs as its own process: learns the process groups (and a temp state dir) over stdin; on EOF
# without "done" (the owner died without stopping them) it ends every group and removes the
# temp dir, so nothing is left behind.
_REAPER_SOURCE = r"""
import os, shutil, signal, sys, time
pgids, dirs = [], []
for line in sys.stdin:
    line = line.rstrip("\n")
    if line == "done":
        sys.exit(0)
    if line.startswith("pid "):
        pgids.append(int(line[4:]))
    elif line.startswith("dir "):
        dirs.append(line[4:])
def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
for sig in (signal.SIGTERM, signal.SIGKILL):
    for pgid in pgids:
        try:
            os.killpg(pgid, sig)
        except OSError:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in pgids):
        time.sleep(0.1)
for d in dirs:
    shutil.rmtree(d, ignore_errors=True)
"""


def pid_alive(pid: int) -> bool:
    """True unless the process is gone or a zombie (a container's PID 1 may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _pid_runs(pid: int, binary: str) -> bool:
    """The pid is alive and still runs ``binary`` (guards against a recycled pid)."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return False
    return os.path.basename(cmdline) == binary


def terminate_group(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM the process group led by ``pid``; SIGKILL it if still there after ``grace_s``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.05)


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_file: Path
    log: IO[bytes]


# --- the control plane -------------------------------------------------------------------------


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on 127.0.0.1, free ports, own PKI.

    ``state_dir``: where PKI, etcd data, logs and kubeconfigs live. None: a temp dir, removed
    on stop. A given dir is kept, and its PKI, tokens and etcd data are reused by the next start.
    ``detached``: leave the processes running when this Python process exits (the CLI's `up`).
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        assets: Path | str | None = None,
        timeout_s: float | None = None,
        detached: bool = False,
        advertise_address: str | None = None,
    ):
        """``advertise_address``: a non-loopback host IP for a real node's pods (the apiserver then
        binds 0.0.0.0 and the `kubernetes` Service gets that endpoint; a loopback one is invalid
        there, so in-pod clients could not reach the API). None: loopback only (the default).
        Claims are provisioned by the real node (devtools.node's local-volume provisioner), as a
        cluster's storage driver does, not by the control plane."""
        self.advertise_address = advertise_address
        self._owns_state_dir = state_dir is None
        self.state_dir = Path(state_dir or tempfile.mkdtemp(prefix="sft-controlplane-")).resolve()
        self._assets = Path(assets) if assets else None
        self.timeout_s = timeout_s if timeout_s is not None else float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
        self.detached = detached
        self._procs: dict[str, _Proc] = {}
        self._reaper: subprocess.Popen[bytes] | None = None
        self.server = ""
        self.admin_token = ""
        self.ca_file = self.state_dir / "pki" / "ca.crt"
        self.kubeconfig = self.state_dir / "kubeconfig"
        self.log_dir = self.state_dir / "logs"
        self.audit_log = self.log_dir / "audit.log"
        self.startup_s: float | None = None
        # Seconds since start() began at which each phase finished (for the benchmark).
        self.timings: dict[str, float] = {}

    # -- lifecycle --

    def __enter__(self) -> "ControlPlane":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> "ControlPlane":
        try:
            assets = check_assets(self._assets, "assets") if self._assets else resolve_assets()
        except BaseException:
            self.stop()  # removes the temp state dir
            raise
        # Free ports are picked, then bound by the binaries: another process may take one in
        # between. Rare; a fresh set of ports fixes it.
        for attempt in range(PORT_ATTEMPTS):
            try:
                return self._start(assets)
            except ControlPlaneCrashed as e:
                if not e.port_in_use or attempt == PORT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _start(self, assets: Path) -> "ControlPlane":
        started = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        tokens = self._write_pki_and_tokens()
        self.timings["pki"] = time.monotonic() - started
        self.admin_token = tokens[ADMIN_USER]
        etcd_port, etcd_peer_port, api_port = free_port(), free_port(), free_port()
        self.server = f"https://127.0.0.1:{api_port}"
        ca_pem = self.ca_file.read_bytes()
        self._write_yaml(self.kubeconfig, kubeconfig_dict(self.server, ca_pem, self.admin_token, ADMIN_USER))
        cm_kubeconfig = self.state_dir / "controller-manager.kubeconfig"
        self._write_yaml(
            cm_kubeconfig,
            kubeconfig_dict(self.server, ca_pem, tokens[CONTROLLER_MANAGER_USER], CONTROLLER_MANAGER_USER),
        )
        if not self.detached:
            atexit.register(self.stop)
            self._start_reaper()
        try:
            self._spawn(ETCD, assets, self._etcd_args(etcd_port, etcd_peer_port))
            self._spawn(APISERVER, assets, self._apiserver_args(api_port, etcd_port))
            self._wait("/readyz answers ok", self._readyz_ok, APISERVER)
            self.timings["apiserver_ready"] = time.monotonic() - started
            self._spawn(CONTROLLER_MANAGER, assets, self._controller_manager_args(cm_kubeconfig))
            # Pods are admitted only once their namespace's default ServiceAccount has a token
            # (1.20's ServiceAccount admission): wait until the controllers got that far.
            self._wait("the default ServiceAccount has its token", self._default_sa_ready, CONTROLLER_MANAGER)
            if self.advertise_address:
                self.timings["default_service_account"] = time.monotonic() - started
                self._correct_kubernetes_endpoints(api_port)
                self.timings["kubernetes_endpoints"] = time.monotonic() - started
        except BaseException:
            self.stop()
            raise
        self.startup_s = self.timings["controllers_ready"] = time.monotonic() - started
        return self

    def stop(self) -> None:
        """End every process (SIGTERM, then SIGKILL); idempotent; remove a temp state dir."""
        atexit.unregister(self.stop)
        for name in STOP_ORDER:
            proc = self._procs.pop(name, None)
            if proc is None:
                continue
            terminate_group(proc.popen.pid)
            try:
                proc.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            proc.log.close()
        if self._reaper is not None:
            try:
                assert self._reaper.stdin is not None
                self._reaper.stdin.write(b"done\n")
                self._reaper.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self._reaper.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._reaper.kill()
            self._reaper = None
        if self._owns_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    # -- health and clients --

    @property
    def pids(self) -> dict[str, int]:
        return {name: p.popen.pid for name, p in self._procs.items()}

    def check(self) -> None:
        """Raise ControlPlaneCrashed, with the last log lines, if any process has exited."""
        for name in BINARIES:
            proc = self._procs.get(name)
            if proc is not None and proc.popen.poll() is not None:
                tail = tail_lines(proc.log_file)
                raise ControlPlaneCrashed(
                    f"{name} (pid {proc.popen.pid}) exited with code {proc.popen.returncode}: "
                    f"{diagnose_exit(name, tail)}",
                    tail,
                    proc.log_file,
                )

    def get(self, path: str, token: str | None = None, timeout_s: float = 5.0) -> tuple[int, bytes]:
        """GET a raw API path as the admin (or with ``token``): (HTTP status, body)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        req = urllib.request.Request(
            self.server + path, headers={"Authorization": f"Bearer {token or self.admin_token}"}
        )
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=timeout_s) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def configuration(self, token: str | None = None) -> Any:
        """A kubernetes.client.Configuration for the admin (or for ``token``)."""
        import kubernetes.client

        conf = kubernetes.client.Configuration()
        conf.host = self.server
        conf.ssl_ca_cert = str(self.ca_file)
        conf.api_key = {"authorization": token or self.admin_token}
        conf.api_key_prefix = {"authorization": "Bearer"}
        return conf

    def api_client(self, token: str | None = None) -> Any:
        """A kubernetes.client.ApiClient for the admin (or for ``token``)."""
        import kubernetes.client

        return kubernetes.client.ApiClient(self.configuration(token))

    def audit_position(self) -> int:
        """A mark in the audit log; pass it to write_requests(since=...) to see only later writes."""
        try:
            return self.audit_log.stat().st_size
        except FileNotFoundError:
            return 0

    def write_requests(
        self, since: int = 0, namespace: str | None = None, user: str | None = None
    ) -> list[WriteRequest]:
        """Writes the API server served after ``since`` (an audit_position()), optionally only
        those in ``namespace`` and/or by ``user`` (e.g. "system:serviceaccount:ns:sa")."""
        with self.audit_log.open("rb") as f:
            f.seek(max(since - 1, 0))
            data = f.read()
        # Only whole lines: the mark may fall inside a line, and the API server may be writing
        # the last one.
        if since > 0:
            data = data[data.find(b"\n") + 1 :]
        lines = data[: data.rfind(b"\n") + 1].decode(errors="replace").splitlines()
        return [
            w
            for w in parse_audit_writes(lines)
            if (namespace is None or w.namespace == namespace) and (user is None or w.user == user)
        ]

    def wait_for_default_service_account(self, namespace: str) -> None:
        """Wait (bounded) until pods can be admitted in ``namespace``: on 1.20 that needs the
        namespace's default ServiceAccount and its token secret (tens of milliseconds)."""
        self._wait(
            f"namespace {namespace} has its default ServiceAccount token",
            lambda: self._default_sa_ready(namespace),
            CONTROLLER_MANAGER,
        )

    # -- internals --

    def _write_pki_and_tokens(self) -> dict[str, str]:
        d = self.state_dir / "pki"
        d.mkdir(exist_ok=True)
        if not (d / "ca.crt").exists():
            ca = pki.make_ca()
            serving = pki.make_serving_cert(
                ca,
                ip_addresses=("127.0.0.1", "10.0.0.1", *((self.advertise_address,) if self.advertise_address else ())),
            )
            sa_key, sa_pub = pki.make_service_account_key()
            for name, data in (
                ("ca.key", ca.key_pem),
                ("apiserver.crt", serving.cert_pem),
                ("apiserver.key", serving.key_pem),
                ("sa.key", sa_key),
                ("sa.pub", sa_pub),
            ):
                _write_private(d / name, data)
            # The CA certificate last: its presence marks a complete PKI.
            _write_private(d / "ca.crt", ca.cert_pem)
        tokens_file = d / "tokens.json"
        if tokens_file.exists():
            tokens = json.loads(tokens_file.read_text())
        else:
            tokens = {ADMIN_USER: secrets.token_urlsafe(32), CONTROLLER_MANAGER_USER: secrets.token_urlsafe(32)}
            _write_private(tokens_file, json.dumps(tokens).encode())
        lines = [
            token_file_line(tokens[ADMIN_USER], ADMIN_USER, "1", ("system:masters",)),
            # Bound to its bootstrap ClusterRole by the API server's default RBAC policy.
            token_file_line(tokens[CONTROLLER_MANAGER_USER], CONTROLLER_MANAGER_USER, "2", ()),
        ]
        _write_private(d / "tokens.csv", ("\n".join(lines) + "\n").encode())
        _write_private(d / "audit-policy.yaml", yaml.safe_dump(AUDIT_POLICY, sort_keys=False).encode())
        return tokens

    def _etcd_args(self, port: int, peer_port: int) -> list[str]:
        client, peer = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer_port}"
        return [
            f"--data-dir={self.state_dir / 'etcd'}",
            "--name=default",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--log-level=warn",
            "--logger=zap",
        ]

    def _apiserver_args(self, port: int, etcd_port: int) -> list[str]:
        p = self.state_dir / "pki"
        return [
            *(
                ("--bind-address=0.0.0.0", f"--advertise-address={self.advertise_address}")
                if self.advertise_address
                else ("--bind-address=127.0.0.1", "--advertise-address=127.0.0.1")
            ),
            f"--secure-port={port}",
            "--insecure-port=0",
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--cert-dir={p}",
            f"--tls-cert-file={p / 'apiserver.crt'}",
            f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            f"--token-auth-file={p / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            "--profiling=false",
            f"--audit-policy-file={p / 'audit-policy.yaml'}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
        ]

    def _controller_manager_args(self, kubeconfig: Path) -> list[str]:
        p = self.state_dir / "pki"
        return [
            f"--kubeconfig={kubeconfig}",
            "--controllers=*,-nodeipam,-nodelifecycle",
            "--leader-elect=false",
            f"--service-account-private-key-file={p / 'sa.key'}",
            f"--root-ca-file={p / 'ca.crt'}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={p / 'ca.crt'}",
            f"--cluster-signing-key-file={p / 'ca.key'}",
            # No health endpoints: a second control plane would fight over their fixed ports.
            "--secure-port=0",
            "--port=0",
            "--profiling=false",
            # The default client rate limit (20 QPS) spends seconds starting the controllers.
            "--kube-api-qps=200",
            "--kube-api-burst=400",
        ]

    def _start_reaper(self) -> None:
        self._reaper = subprocess.Popen(
            [sys.executable, "-c", _REAPER_SOURCE],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if self._owns_state_dir:
            assert self._reaper.stdin is not None
            self._reaper.stdin.write(f"dir {self.state_dir}\n".encode())
            self._reaper.stdin.flush()

    def _spawn(self, name: str, assets: Path, args: list[str]) -> None:
        log_file = self.log_dir / f"{name}.log"
        log = log_file.open("ab")
        log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {name} {' '.join(args)}\n".encode())
        log.flush()
        try:
            popen = subprocess.Popen(
                [str(assets / name), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.state_dir,
            )
        except OSError as e:
            log.close()
            raise ControlPlaneError(f"cannot start {assets / name}: {e}") from None
        self._procs[name] = _Proc(name, popen, log_file, log)
        if self._reaper is not None and self._reaper.stdin is not None:
            self._reaper.stdin.write(f"pid {popen.pid}\n".encode())
            self._reaper.stdin.flush()

    def _wait(self, what: str, ready: Callable[[], tuple[bool, str]], blame: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        last = "no answer yet"
        while True:
            try:
                self.check()
            except ControlPlaneCrashed as e:
                raise ControlPlaneCrashed(f"{e.summary} (before {what})", e.log_tail, e.log_file) from None
            ok, last = ready()
            if ok:
                return
            if time.monotonic() > deadline:
                proc = self._procs[blame]
                raise ControlPlaneError(
                    f"timed out after {self.timeout_s:.0f}s waiting until {what} (last: {last}); "
                    f"set {TIMEOUT_ENV} to wait longer",
                    tail_lines(proc.log_file),
                    proc.log_file,
                )
            time.sleep(0.05)

    def _readyz_ok(self) -> tuple[bool, str]:
        try:
            status, body = self.get("/readyz", timeout_s=2)
        except (OSError, ssl.SSLError) as e:
            return False, str(e)[:200]
        return status == 200 and body.strip() == b"ok", f"HTTP {status} {body[:200]!r}"

    def _correct_kubernetes_endpoints(self, port: int) -> None:
        """Pods reach the API server through the `kubernetes` Service: make sure its endpoints
        are this API server's address and port. A state dir used before keeps the previous
        start's port there: kube-apiserver 1.20's endpoint reconciler corrects the address but
        not the port of an existing Endpoints object (ports are reconciled only when it is
        created), so every pod would connect to a dead port (issue 22: `make realnode-up` twice).
        A stale object is deleted and the reconciler re-creates it right (within its 10 s
        interval); if it does not, the start is refused with the reason."""
        deleted = False

        def correct() -> tuple[bool, str]:
            nonlocal deleted
            problem = kubernetes_service_problem(
                *self._kubernetes_service_objects(), self.advertise_address or "", port
            )
            if problem is None:
                return True, ""
            stale = service_endpoints(self._kubernetes_service_objects()[0])
            if stale and not deleted and any(p != port for _, p in stale):
                status, body = self.request("DELETE", "/api/v1/namespaces/default/endpoints/kubernetes")
                if status not in (200, 404):
                    return False, f"{problem}; deleting the stale Endpoints failed: HTTP {status} {body[:200]!r}"
                deleted = True
            return False, problem

        self._wait("the `kubernetes` Service's endpoints are this API server's", correct, APISERVER)

    def _kubernetes_service_objects(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The `kubernetes` Endpoints and EndpointSlice (None where missing)."""
        objects: list[dict[str, Any] | None] = []
        for path in (
            "/api/v1/namespaces/default/endpoints/kubernetes",
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes",
        ):
            status, body = self.get(path, timeout_s=5)
            if status == 404 and "endpointslices" in path:  # 1.20 serves the slices as v1beta1 only
                status, body = self.get(path.replace("/v1/", "/v1beta1/"), timeout_s=5)
            objects.append(json.loads(body) if status == 200 else None)
        return objects[0], objects[1]

    def request(self, method: str, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
        """A bodiless request (e.g. DELETE) as the admin: (HTTP status, body)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        req = urllib.request.Request(
            self.server + path, method=method, headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=timeout_s) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def _default_sa_ready(self, namespace: str = "default") -> tuple[bool, str]:
        try:
            status, body = self.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/default", timeout_s=2)
        except (OSError, ssl.SSLError) as e:
            return False, str(e)[:200]
        if status != 200:
            return False, f"HTTP {status}"
        return bool(json.loads(body).get("secrets")), f"ServiceAccount {namespace}/default has no token secret yet"

    @staticmethod
    def _write_yaml(path: Path, data: dict[str, Any]) -> None:
        _write_private(path, yaml.safe_dump(data, sort_keys=False).encode())


def _write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read (keys and tokens), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# --- service accounts --------------------------------------------------------------------------


def request_service_account_token(
    api_client: Any,
    namespace: str,
    service_account: str,
    expiration_seconds: int = 3600,
    audiences: list[str] | None = None,
) -> str:
    """A bound token for a ServiceAccount from the TokenRequest API."""
    import kubernetes.client

    body = kubernetes.client.AuthenticationV1TokenRequest(
        spec=kubernetes.client.V1TokenRequestSpec(
            audiences=audiences or [SERVICE_ACCOUNT_ISSUER],
            expiration_seconds=expiration_seconds,
        )
    )
    resp = kubernetes.client.CoreV1Api(api_client).create_namespaced_service_account_token(
        service_account, namespace, body
    )
    return resp.status.token


def service_account_kubeconfig(
    cp: ControlPlane,
    namespace: str,
    service_account: str,
    path: Path | str,
    expiration_seconds: int = 3600,
) -> Path:
    """Write a kubeconfig that acts with exactly ``service_account``'s permissions."""
    with cp.api_client() as admin:
        token = request_service_account_token(admin, namespace, service_account, expiration_seconds)
    path = Path(path)
    user = f"system:serviceaccount:{namespace}:{service_account}"
    _write_private(
        path,
        yaml.safe_dump(
            kubeconfig_dict(cp.server, cp.ca_file.read_bytes(), token, user, namespace), sort_keys=False
        ).encode(),
    )
    return path


# --- CLI: detached up / down -------------------------------------------------------------------


def _read_state(state_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((state_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return None


def _running_pids(state: dict[str, Any]) -> dict[str, int]:
    return {name: pid for name, pid in state.get("pids", {}).items() if _pid_runs(pid, name)}


def cli_up(state_dir: Path, advertise_address: str | None = None) -> int:
    state = _read_state(state_dir)
    if state and _running_pids(state):
        print(f"control plane already running in {state_dir} (pids {_running_pids(state)})")
        print(f"  export KUBECONFIG={state['kubeconfig']}; kubectl get --raw /readyz")
        return 0
    cp = ControlPlane(state_dir=state_dir, detached=True, advertise_address=advertise_address)
    cp.start()
    _write_private(
        state_dir / STATE_FILE,
        json.dumps(
            {
                "pids": cp.pids,
                "server": cp.server,
                "kubeconfig": str(cp.kubeconfig),
            },
            indent=2,
        ).encode(),
    )
    print(f"control plane up in {cp.startup_s:.1f}s: {cp.server} (logs in {cp.log_dir})")
    print(f"  export KUBECONFIG={cp.kubeconfig}; kubectl get --raw /readyz")
    print(f"  stop it: python -m devtools.controlplane down --state-dir {state_dir}")
    return 0


def cli_down(state_dir: Path) -> int:
    state = _read_state(state_dir)
    running = _running_pids(state) if state else {}
    for name in STOP_ORDER:
        if name in running:
            terminate_group(running[name])
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    print(f"control plane in {state_dir} stopped" if running else f"no control plane running in {state_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.controlplane", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--state-dir", type=Path, default=Path(".local"), help="default: .local")
    parser.add_argument(
        "--for-real-node",
        action="store_true",
        help="up: advertise this machine's IP, so pods reach the API (for devtools.node, "
        "whose provisioner then serves claims)",
    )
    args = parser.parse_args(argv)
    state_dir = args.state_dir.resolve()
    try:
        if args.command == "up":
            advertise = None
            if args.for_real_node:
                from devtools.node import host_ip

                advertise = host_ip()
            return cli_up(state_dir, advertise)
        return cli_down(state_dir)
    except ControlPlaneError as e:
        where = f" (log: {e.log_file})" if e.log_file else ""
        print(f"controlplane {args.command}: error: {e.summary}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"controlplane {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
