"""The local control plane is real: readiness, custom resources, the StatefulSet controller,
service-account tokens and RBAC, clear errors, crash reporting, clean stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import kubernetes.client
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from devtools.controlplane import (
    ASSETS_ENV,
    ControlPlane,
    ControlPlaneCrashed,
    ControlPlaneError,
    pid_alive,
    resolve_assets,
    service_account_kubeconfig,
)
from devtools.stack import wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


wait_for = wait_until  # one poller for the whole project (dev/stack.py)


def test_readyz_answers_ok_through_the_written_kubeconfig(control_plane):
    assert control_plane.get("/readyz") == (200, b"ok")
    # The kubeconfig file is what kubectl, kopf and a newcomer use.
    out = subprocess.run(
        ["kubectl", "--kubeconfig", str(control_plane.kubeconfig), "get", "--raw", "/readyz"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (out.returncode, out.stdout.strip()) == (0, "ok"), out.stderr
    assert control_plane.get("/version")[0] == 200
    assert b'"gitVersion": "v1.20' in control_plane.get("/version")[1]


def test_anonymous_and_wrong_token_are_refused(control_plane):
    assert control_plane.get("/api/v1/namespaces", token="not-a-token")[0] == 401


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.cptest.finetune.dev"},
    "spec": {
        "group": "cptest.finetune.dev",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "size": {"type": "integer", "minimum": 1},
                                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                },
                            },
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}


def test_a_crd_and_100_custom_resources_with_maps_do_not_crash_the_apiserver(control_plane, api_client, namespace):
    # Guards the broken build: reflect2 v1.0.1 under Go 1.19 segfaults the apiserver on the
    # first custom-resource write that carries a map.
    ext = kubernetes.client.ApiextensionsV1Api(api_client)
    try:
        ext.create_custom_resource_definition(CRD)
    except ApiException as e:
        if e.status != 409:
            raise
    wait_for(
        "the CRD to be established",
        lambda: any(
            c.type == "Established" and c.status == "True"
            for c in (ext.read_custom_resource_definition(CRD["metadata"]["name"]).status.conditions or [])
        ),
    )
    custom = kubernetes.client.CustomObjectsApi(api_client)
    for i in range(100):
        custom.create_namespaced_custom_object(
            "cptest.finetune.dev",
            "v1",
            namespace,
            "widgets",
            {
                "apiVersion": "cptest.finetune.dev/v1",
                "kind": "Widget",
                "metadata": {"name": f"w-{i}", "labels": {"index": str(i)}},
                "spec": {"size": i + 1, "labels": {"a": "b", "index": str(i)}},
            },
        )
    items = custom.list_namespaced_custom_object("cptest.finetune.dev", "v1", namespace, "widgets")["items"]
    assert sorted(int(o["metadata"]["name"][2:]) for o in items) == list(range(100))
    assert items[0]["spec"]["labels"]["a"] == "b"
    # Schema validation is real.
    with pytest.raises(ApiException) as bad:
        custom.create_namespaced_custom_object(
            "cptest.finetune.dev",
            "v1",
            namespace,
            "widgets",
            {
                "apiVersion": "cptest.finetune.dev/v1",
                "kind": "Widget",
                "metadata": {"name": "bad"},
                "spec": {"size": 0},
            },
        )
    assert bad.value.status == 422 and "spec.size" in bad.value.body
    control_plane.check()


def test_the_statefulset_controller_creates_pods(control_plane, api_client, namespace):
    apps = kubernetes.client.AppsV1Api(api_client)
    core = kubernetes.client.CoreV1Api(api_client)
    labels = {"app": "cp-test"}
    apps.create_namespaced_stateful_set(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "web"},
            "spec": {
                "serviceName": "web",
                "replicas": 2,
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [{"name": "c", "image": "busybox"}],
                    },
                },
            },
        },
    )
    pods = wait_for(
        "2 pods of the StatefulSet",
        lambda: (lambda ps: ps if len(ps) == 2 else None)(
            core.list_namespaced_pod(namespace, label_selector="app=cp-test").items
        ),
    )
    assert sorted(p.metadata.name for p in pods) == ["web-0", "web-1"]
    # No kubelet, no scheduler: the pods exist and stay Pending.
    assert {p.status.phase for p in pods} == {"Pending"}
    assert all(p.metadata.owner_references[0].kind == "StatefulSet" for p in pods)


def test_a_service_account_kubeconfig_has_exactly_its_rbac_permissions(control_plane, api_client, namespace, tmp_path):
    core = kubernetes.client.CoreV1Api(api_client)
    rbac = kubernetes.client.RbacAuthorizationV1Api(api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "cm-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "cm-reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    path = service_account_kubeconfig(control_plane, namespace, "reader", tmp_path / "reader.kubeconfig")
    config = yaml.safe_load(path.read_text())
    assert config["contexts"][0]["context"]["namespace"] == namespace

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", "--kubeconfig", str(path), *args], capture_output=True, text=True, timeout=30)

    mark = control_plane.audit_position()
    created = kubectl("create", "configmap", "by-reader", "--from-literal=a=b")
    assert created.returncode != 0 and "forbidden" in created.stderr.lower()
    kubernetes.client.CoreV1Api(api_client).create_namespaced_config_map(namespace, {"metadata": {"name": "by-admin"}})
    # The audit log attributes every write to its user and namespace, refused ones included.
    reader = f"system:serviceaccount:{namespace}:reader"
    assert [(w.verb, w.resource, w.name, w.code) for w in control_plane.write_requests(mark, namespace, reader)] == [
        ("create", "configmaps", "", 403)
    ]
    assert [
        (w.verb, w.name, w.user) for w in control_plane.write_requests(mark, namespace) if w.resource == "configmaps"
    ] == [("create", "", reader), ("create", "by-admin", "sft-admin")]

    allowed = kubectl("get", "configmaps")
    assert allowed.returncode == 0, allowed.stderr
    denied = kubectl("get", "secrets")
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    assert f"system:serviceaccount:{namespace}:reader" in denied.stderr


def test_a_bad_kubebuilder_assets_gives_one_clear_error(tmp_path):
    (tmp_path / "etcd").write_text("#!/bin/sh\n")
    (tmp_path / "etcd").chmod(0o755)
    with pytest.raises(ControlPlaneError) as err:
        resolve_assets({ASSETS_ENV: str(tmp_path)})
    assert str(err.value) == (
        f"{ASSETS_ENV}={tmp_path}: no executable 'kube-apiserver' in {tmp_path}; "
        f"unset {ASSETS_ENV} to build the binaries with provision-k8s.sh"
    )
    cp = ControlPlane(assets=tmp_path)
    with pytest.raises(ControlPlaneError, match="^assets: no executable 'kube-apiserver'"):
        cp.start()
    assert not cp.state_dir.exists()  # its temp dir is not left behind
    # The CLI says the same in one line, without a stack trace, and exits 1.
    out = subprocess.run(
        [sys.executable, "-m", "devtools.controlplane", "up", "--state-dir", str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, ASSETS_ENV: str(tmp_path)},
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [f"controlplane up: error: {err.value}"]


def test_a_binary_that_exits_at_start_is_reported_with_its_log(tmp_path):
    assets = tmp_path / "assets"
    assets.mkdir()
    real = resolve_assets()
    for name in ("etcd", "kube-controller-manager"):
        (assets / name).symlink_to(real / name)
    (assets / "kube-apiserver").write_text("#!/bin/sh\necho 'E: cannot open the foo file' >&2\nexit 3\n")
    (assets / "kube-apiserver").chmod(0o755)
    with pytest.raises(ControlPlaneCrashed) as err:
        ControlPlane(assets=assets, timeout_s=30).start()
    assert err.value.summary.startswith("kube-apiserver (pid ")
    assert (
        "exited with code 3: kube-apiserver: E: cannot open the foo file (before /readyz answers ok)"
        in err.value.summary
    )
    assert err.value.log_tail[-1] == "E: cannot open the foo file"


def test_a_killed_apiserver_is_reported_by_the_health_check():
    with ControlPlane() as cp:
        cp.check()
        os.kill(cp.pids["kube-apiserver"], signal.SIGKILL)
        wait_for("the apiserver to die", lambda: cp._procs["kube-apiserver"].popen.poll() is not None, 10)
        with pytest.raises(ControlPlaneCrashed) as err:
            cp.check()
        assert err.value.summary.startswith("kube-apiserver (pid ")
        assert "exited with code -9" in err.value.summary
        assert err.value.log_tail, "the report carries the apiserver's last log lines"
        pids = list(cp.pids.values())
        state_dir = cp.state_dir
    assert [pid for pid in pids if pid_alive(pid)] == []
    assert not state_dir.exists()


def test_a_port_in_use_is_named_after_retries(tmp_path, monkeypatch):
    from devtools import controlplane

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # Every start attempt gets the occupied port for etcd's client URL.
        monkeypatch.setattr(controlplane, "free_port", lambda: port)
        with pytest.raises(ControlPlaneCrashed) as err:
            ControlPlane(state_dir=tmp_path, timeout_s=30).start()
    assert err.value.port_in_use
    assert "etcd could not bind its port (port in use); retry, or free the port" in err.value.summary
    assert (tmp_path / "logs" / "etcd.log").read_text().count("=== ") == controlplane.PORT_ATTEMPTS


def test_readiness_has_a_bounded_timeout_and_leaves_no_process(tmp_path):
    assets = tmp_path / "assets"
    assets.mkdir()
    real = resolve_assets()
    for name in ("etcd", "kube-controller-manager"):
        (assets / name).symlink_to(real / name)
    # An apiserver that never answers.
    (assets / "kube-apiserver").write_text("#!/bin/sh\necho 'starting slowly'\nexec sleep 600\n")
    (assets / "kube-apiserver").chmod(0o755)
    cp = ControlPlane(state_dir=tmp_path / "state", assets=assets, timeout_s=2)
    started = time.monotonic()
    with pytest.raises(ControlPlaneError) as err:
        cp.start()
    assert time.monotonic() - started < 20
    assert err.value.summary.startswith("timed out after 2s waiting until /readyz answers ok (last: ")
    assert err.value.log_tail[-1] == "starting slowly"
    assert cp.pids == {}
    leftovers = subprocess.run(["pgrep", "-f", str(assets)], capture_output=True, text=True).stdout.split()
    assert [pid for pid in map(int, leftovers) if pid_alive(pid)] == []


# The owner takes SIGINT as a user's Ctrl-C does, whatever it inherited: the test hung (130 s) only
# under xdist, in 3 of 5 full runs. Likely cause, not proven: a library run in-process by the worker
# before (multiprocess' resource tracker, used by datasets, ignores and blocks SIGINT around its
# spawn) left the worker's children SIGINT ignored or blocked.
OWNER_SCRIPT = """
import json, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
from devtools.controlplane import ControlPlane
with ControlPlane() as cp:
    print(json.dumps({"pids": cp.pids, "state_dir": str(cp.state_dir)}), flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_no_process_outlives_an_owner_that_is_killed_or_interrupted(sig):
    owner = subprocess.Popen([sys.executable, "-c", OWNER_SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        line = owner.stdout.readline()
        assert line, "the owner did not start a control plane"
        started = json.loads(line)
        pids = started["pids"]
        assert sorted(pids) == ["etcd", "kube-apiserver", "kube-controller-manager"]
        owner.send_signal(sig)
        # stop()'s worst case: per process 10 s of SIGTERM grace + 5 s after SIGKILL, three
        # processes, then the reaper's 5 s; twice that as a hang guard: with the suite's other workers
        # loading the 2 cores the SIGINT owner took over 65 s twice (alone: under 8 s).
        owner.wait(timeout=2 * (3 * (10 + 5) + 5) + 30)
        wait_for("every control-plane process to end", lambda: not any(pid_alive(p) for p in pids.values()), 30)
        wait_for("the temp state dir to be removed", lambda: not Path(started["state_dir"]).exists(), 10)
    finally:
        owner.kill()


def test_cli_up_is_detached_idempotent_and_down_leaves_nothing(tmp_path):
    state = tmp_path / "state"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "devtools.controlplane", *args, "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    up = cli("up")
    try:
        assert up.returncode == 0, up.stderr
        assert f"export KUBECONFIG={state / 'kubeconfig'}; kubectl get --raw /readyz" in up.stdout
        pids = json.loads((state / "controlplane.json").read_text())["pids"]
        assert all(pid_alive(p) for p in pids.values())  # they outlived the `up` command
        ready = subprocess.run(
            ["kubectl", "--kubeconfig", str(state / "kubeconfig"), "get", "--raw", "/readyz"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert ready.stdout.strip() == "ok", ready.stderr
        again = cli("up")
        assert again.returncode == 0 and again.stdout.startswith(f"control plane already running in {state}")
    finally:
        down = cli("down")
    assert (down.returncode, down.stdout.strip()) == (0, f"control plane in {state} stopped")
    assert [p for p in pids.values() if pid_alive(p)] == []
    assert cli("down").stdout.strip() == f"no control plane running in {state}"


def test_a_state_dir_started_again_on_a_new_port_gives_pods_that_port(tmp_path):
    """`make realnode-up`, `make realnode-down`, `make realnode-up` on the same .local: the API
    server comes back on a new port, and the `kubernetes` Service (Endpoints and EndpointSlice,
    what kube-proxy programs) must follow it; kube-apiserver 1.20 alone keeps the old port."""
    from devtools.controlplane import kubernetes_service_problem
    from devtools.node import host_ip

    address = host_ip()
    state = tmp_path / "state"
    first = ControlPlane(state_dir=state, advertise_address=address).start()
    try:
        old_port = int(first.server.rsplit(":", 1)[1])
        assert kubernetes_service_problem(*first._kubernetes_service_objects(), address, old_port) is None
    finally:
        first.stop()
    # The old port stays taken, so the second start cannot get it back by chance.
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", old_port))
        second = ControlPlane(state_dir=state, advertise_address=address).start()
        try:
            new_port = int(second.server.rsplit(":", 1)[1])
            assert new_port != old_port
            assert kubernetes_service_problem(*second._kubernetes_service_objects(), address, new_port) is None
            took = second.timings["kubernetes_endpoints"] - second.timings["default_service_account"]
            print(f"second start on {second.server}: the `kubernetes` endpoints corrected in {took:.1f} s")
            time.sleep(11)  # a whole reconcile interval later the reconciler has not put the old port back
            assert kubernetes_service_problem(*second._kubernetes_service_objects(), address, new_port) is None
        finally:
            second.stop()
