"""Pure parts of the local real node (devtools.node, node_dns, realstack): configs, DNS answers,
filling a claim."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from devtools import node
from devtools.controlplane import ControlPlane
from devtools.realstack import copy_as_root_writes


def test_kubelet_config_is_the_dev_node_contract(tmp_path: Path) -> None:
    cfg = node.kubelet_config(tmp_path, "cgroupfs")
    assert cfg["address"] == "127.0.0.1" and cfg["authorization"] == {"mode": "AlwaysAllow"}
    assert cfg["failSwapOn"] is False and cfg["cgroupDriver"] == "cgroupfs"
    assert cfg["clusterDNS"] == [node.GATEWAY] and cfg["resolvConf"] == str(tmp_path / "resolv.conf")


def test_cni_config_keeps_pods_on_this_machine(tmp_path: Path) -> None:
    bridge = node.cni_config(tmp_path)["plugins"][0]
    assert bridge["bridge"] == node.BRIDGE and bridge["ipam"]["ranges"] == [[{"subnet": node.POD_CIDR}]]
    assert bridge["ipam"]["dataDir"] == str(tmp_path / "cni-ipam")


def test_control_plane_defaults_stay_loopback(tmp_path: Path) -> None:
    cp = ControlPlane(state_dir=tmp_path)
    args = cp._apiserver_args(6443, 2379)
    assert "--bind-address=127.0.0.1" in args and "--advertise-address=127.0.0.1" in args
    real = ControlPlane(state_dir=tmp_path, advertise_address="192.0.2.2")
    assert "--bind-address=0.0.0.0" in real._apiserver_args(6443, 2379)
    assert "--advertise-address=192.0.2.2" in real._apiserver_args(6443, 2379)
    # Claims are the node's provisioner's (devtools.local_provisioner), never hostPath directories.
    assert "--enable-hostpath-provisioner" not in real._controller_manager_args(tmp_path / "k")


class FakeApi:
    def get(self, path: str) -> dict[str, Any]:
        return {
            "/api/v1/services": {
                "items": [
                    {"metadata": {"namespace": "ns", "name": "web"}, "spec": {"clusterIP": "10.0.0.9"}},
                    {
                        "metadata": {"namespace": "ns", "name": "job"},
                        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True},
                    },
                ]
            },
            "/api/v1/endpoints": {
                "items": [
                    {
                        "metadata": {"namespace": "ns", "name": "job"},
                        "subsets": [{"notReadyAddresses": [{"ip": "10.244.0.5", "hostname": "job-0"}]}],
                    },
                ]
            },
        }[path]


def _ask(resolver: Any, name: str) -> tuple[int, list[str]]:
    from dnslib import DNSRecord

    reply = resolver.resolve(DNSRecord.question(name), None)
    return reply.header.rcode, [str(rr.rdata) for rr in reply.rr]


def test_dns_answers_services_statefulset_pods_and_nxdomain() -> None:
    from devtools.node_dns import Resolver

    resolver = Resolver(FakeApi(), interval=3600)
    assert _ask(resolver, "web.ns.svc.cluster.local") == (0, ["10.0.0.9"])
    assert _ask(resolver, "job-0.job.ns.svc.cluster.local") == (0, ["10.244.0.5"])
    assert _ask(resolver, "10-244-0-7.ns.pod.cluster.local") == (0, ["10.244.0.7"])
    assert _ask(resolver, "nothing.example.com")[0] == 3  # NXDOMAIN


@pytest.mark.skipif(not os.path.exists("/proc/net/route"), reason="needs Linux routing tables")
def test_host_ip_is_not_loopback() -> None:
    assert not node.host_ip().startswith("127.")


def test_a_second_real_node_on_the_machine_waits_then_names_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node, "MACHINE_LOCK", tmp_path / "realnode.lock")
    first = node.RealNode(tmp_path / "kubeconfig", tmp_path / "first")
    first._lock_machine()
    monkeypatch.setenv(node.LOCK_WAIT_ENV, "0")
    second = node.RealNode(tmp_path / "kubeconfig", tmp_path / "second")
    with pytest.raises(node.NodeError, match=rf"another real node runs on this machine \(pid {os.getpid()}, "):
        second._lock_machine()
    first._unlock_machine()
    second._lock_machine()  # free again once the first stopped
    second._unlock_machine()


def test_copy_as_root_writes_gives_the_modes_root_writes_not_the_sources(tmp_path: Path) -> None:
    source, target = tmp_path / "src", tmp_path / "claim"
    (source / "model").mkdir(parents=True)
    weights = source / "model" / "model.safetensors"
    weights.write_bytes(b"w")
    os.chmod(weights, 0o600)  # as safetensors saves it
    (source / "data.jsonl").write_text("{}\n")
    target.mkdir(mode=0o700)
    copy_as_root_writes(source, target)
    modes = {str(p.relative_to(target)): oct(stat.S_IMODE(p.stat().st_mode)) for p in target.rglob("*")}
    assert modes == {"data.jsonl": "0o644", "model": "0o755", "model/model.safetensors": "0o644"}
    assert (target / "model" / "model.safetensors").read_bytes() == b"w"
    assert stat.S_IMODE(target.stat().st_mode) == 0o700  # the claim's own directory is not touched


def _e2e_harness() -> Any:
    """tests/e2e/realnode_harness.py (the e2e tier's, not a package), loaded from its file."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "e2e" / "realnode_harness.py"
    spec = importlib.util.spec_from_file_location("realnode_harness_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DEAD_PID = 999_999_999  # above any pid_max: no such process


class _StoppedStack:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.stopped = 0

    def stop(self) -> None:
        self.stopped += 1


def test_the_shared_stack_is_stopped_once_no_live_worker_uses_it(tmp_path: Path) -> None:
    harness = _e2e_harness()
    shared = harness.SharedStack(None, coord_dir=tmp_path)
    (tmp_path / harness.USERS_DIR).mkdir()
    (tmp_path / harness.STATE_FILE).write_text(json.dumps({"owner_pid": os.getpid()}))
    # A worker that died while it used the stack does not keep it up for an hour.
    (tmp_path / harness.USERS_DIR / f"gw1-{DEAD_PID}").touch()
    stack = _StoppedStack()
    shared._stop_when_unused(stack)
    assert stack.stopped == 1
    assert not (tmp_path / harness.STATE_FILE).exists()  # no worker attaches to a stopping stack


def test_a_stack_whose_starter_died_is_started_anew_not_attached_to(tmp_path: Path) -> None:
    harness = _e2e_harness()
    shared = harness.SharedStack(None, coord_dir=tmp_path)
    assert shared._running_connection() is None
    (tmp_path / harness.STATE_FILE).write_text(json.dumps({"owner_pid": DEAD_PID, "server": "https://a"}))
    assert shared._running_connection() is None and not (tmp_path / harness.STATE_FILE).exists()
    (tmp_path / harness.STATE_FILE).write_text(json.dumps({"owner_pid": os.getpid(), "server": "https://b"}))
    assert shared._running_connection() == {"owner_pid": os.getpid(), "server": "https://b"}
    assert (harness._alive(f"gw0-{os.getpid()}"), harness._alive(f"gw0-{DEAD_PID}"), harness._alive("x")) == (
        True,
        False,
        False,
    )
