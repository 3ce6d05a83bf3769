"""The dev local node on the real local control plane: pods bound, run as processes, reported.

Plain StatefulSets, Services and Pods with sh/python commands: nothing of sft-operator but the
local node itself.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from devtools.localnode import LocalNode
from devtools.localnode_api import KubeRest, pod_path
from devtools.stack import wait_until

pytestmark = pytest.mark.integration

NODE = "localnode-it"
# The namespaces of this module's tests: the node schedules only their pods, never leftovers of
# other modules' tests (an operator test's Pending training pods, say).
OUR_NAMESPACES: set[str] = set()


@pytest.fixture(scope="module")
def node_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("localnode")


@pytest.fixture(scope="module")
def local_node(control_plane: Any, node_state: Path) -> Iterator[LocalNode]:
    node = LocalNode(control_plane.kubeconfig, node_state, NODE, backoff_base_s=0.3, backoff_cap_s=2.0,
                     stop_grace_s=3.0, schedules=OUR_NAMESPACES.__contains__)
    with node:
        yield node
    assert node.container_pids() == []


@pytest.fixture
def rest(api_client: Any, namespace: str) -> KubeRest:
    OUR_NAMESPACES.add(namespace)
    client = KubeRest(api_client)
    # 1.20's ServiceAccount admission rejects pods until the namespace's token secret exists.
    def token_secret_listed() -> bool:
        accounts = client.get(f"/api/v1/namespaces/{namespace}/serviceaccounts")["items"]
        return any(a["metadata"]["name"] == "default" and a.get("secrets") for a in accounts)

    wait_for("the default service account's token", token_secret_listed)
    return client


wait_for = wait_until  # one poller for the whole project (dev/stack.py)


def get_pod(rest: KubeRest, namespace: str, name: str) -> dict[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return rest.get(pod_path(namespace, name))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def container_status(pod: dict[str, Any] | None) -> dict[str, Any]:
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or [{}]
    return statuses[0]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie no one reaped yet is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def pid_of(pod: dict[str, Any]) -> int:
    return int(container_status(pod)["containerID"].removeprefix("localnode://"))


def simple_pod(name: str, script: str, **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "not-used", "command": ["sh", "-c", script]}
    container.update(spec.pop("container", {}))
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [container], "terminationGracePeriodSeconds": 5, **spec}}


REPORTER = r"""
import json, os, socket, time
me, peer = os.environ["POD"], "web-1" if os.environ["POD"] == "web-0" else "web-0"
ns = os.environ["NS"]
peer_fqdn = f"{peer}.web.{ns}.svc"
deadline = time.time() + 30
while True:  # the peer may start after us: its name appears in /etc/hosts when it exists
    try:
        peer_ip = socket.gethostbyname(peer_fqdn)
        break
    except OSError:
        if time.time() > deadline:
            raise
        time.sleep(0.2)
report = {
    "pod": me, "ns": ns, "ip": os.environ["IP"], "greeting": os.environ["GREETING"],
    "token": os.environ["TOKEN"], "config": open("/etc/sft/training.json").read(),
    "hostname": socket.gethostname(), "peer_ip": peer_ip, "cwd": os.getcwd(),
    "shm_writable": os.access("/dev/shm", os.W_OK),
}
with open(f"/checkpoints/{me}.json", "w") as f:
    json.dump(report, f)
print("reported", flush=True)
while True:
    time.sleep(0.2)
"""


def test_statefulset_pods_run_with_env_volumes_and_peer_dns_then_scale_to_zero(
    local_node: LocalNode, rest: KubeRest, namespace: str, node_state: Path
):
    ns = namespace
    rest.post(f"/api/v1/namespaces/{ns}/configmaps",
              {"metadata": {"name": "cfg"}, "data": {"greeting": "hello", "training.json": '{"epochs": 1}'}})
    rest.post(f"/api/v1/namespaces/{ns}/secrets", {"metadata": {"name": "sec"}, "stringData": {"token": "s3cret"}})
    rest.post(f"/api/v1/namespaces/{ns}/services", {"metadata": {"name": "web"}, "spec": {
        "clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 29500}]}})
    env = [
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}},
    ]
    rest.post(f"/apis/apps/v1/namespaces/{ns}/statefulsets", {"metadata": {"name": "web"}, "spec": {
        "serviceName": "web", "replicas": 2, "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "main", "image": "not-used", "command": ["python", "-c", REPORTER], "env": env,
                "workingDir": "/checkpoints",
                "volumeMounts": [{"name": "ckpt", "mountPath": "/checkpoints"},
                                 {"name": "cfg", "mountPath": "/etc/sft", "readOnly": True},
                                 {"name": "dshm", "mountPath": "/dev/shm"}],
            }],
            "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}},
                        {"name": "dshm", "emptyDir": {"medium": "Memory"}}],
        }},
        "volumeClaimTemplates": [{"metadata": {"name": "ckpt"}, "spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
    }})

    reports = {}
    for name in ("web-0", "web-1"):
        report_file = local_node.claim_dir(ns, f"ckpt-{name}") / f"{name}.json"
        wait_for(f"{name}'s report on its claim", report_file.exists)
        reports[name] = json.loads(report_file.read_text())
        pod = get_pod(rest, ns, name)
        assert pod is not None
        assert pod["spec"]["nodeName"] == NODE
        assert pod["status"]["phase"] == "Running"
        assert pod["status"]["podIP"] == "127.0.0.1"
        assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"
        assert container_status(pod)["state"].keys() == {"running"}
    assert reports["web-0"] == {
        "pod": "web-0", "ns": ns, "ip": "127.0.0.1", "greeting": "hello", "token": "s3cret",
        "config": '{"epochs": 1}', "hostname": "web-0", "peer_ip": "127.0.0.1", "cwd": "/checkpoints",
        "shm_writable": True,
    }
    assert reports["web-1"]["peer_ip"] == "127.0.0.1"
    log = local_node.log_file(ns, "web-0", "main")
    assert log.read_text() == "reported\n"
    wait_for("claims Bound", lambda: all(
        c["status"].get("phase") == "Bound"
        for c in rest.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims")["items"]))

    pids = [pid_of(get_pod(rest, ns, name)) for name in ("web-0", "web-1")]
    assert all(pid_alive(p) for p in pids)
    rest.merge_patch(f"/apis/apps/v1/namespaces/{ns}/statefulsets/web", {"spec": {"replicas": 0}})
    # python exits on SIGTERM by default: well within the 5 s grace.
    wait_for("pods gone", lambda: not rest.get(f"/api/v1/namespaces/{ns}/pods")["items"], timeout_s=20)
    assert not any(pid_alive(p) for p in pids)
    # The claim's data outlives the pods.
    assert (node_state / "volumes" / ns / "ckpt-web-0" / "web-0.json").exists()


def test_a_mount_over_the_state_dirs_parent_does_not_hide_later_mounts(
    local_node: LocalNode, rest: KubeRest, namespace: str, node_state: Path
):
    # The state dir lives under /tmp here; an emptyDir at /tmp is mounted before /etc/sft.
    top = "/" + node_state.parts[1]
    rest.post(f"/api/v1/namespaces/{namespace}/configmaps", {"metadata": {"name": "cfg"}, "data": {"k": "v"}})
    script = f"cat /etc/sft/k > /dev/termination-log; test -d {node_state / 'logs'} || echo hidden >> /dev/termination-log"
    pod = simple_pod("shadow", script,
                     restartPolicy="Never",
                     volumes=[{"name": "scratch", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "cfg"}}])
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "scratch", "mountPath": top},
                                                    {"name": "cfg", "mountPath": "/etc/sft"}]
    rest.post(f"/api/v1/namespaces/{namespace}/pods", pod)
    done = wait_for("finished", lambda: (p := get_pod(rest, namespace, "shadow"))
                    and p["status"].get("phase") in ("Succeeded", "Failed") and p)
    terminated = container_status(done)["state"]["terminated"]
    assert (done["status"]["phase"], terminated["message"]) == ("Succeeded", "vhidden"), terminated


def test_containers_of_one_pod_share_volumes_and_report_separately(
    local_node: LocalNode, rest: KubeRest, namespace: str
):
    writer = {"name": "writer", "image": "x", "command": ["sh", "-c", "echo shared > /data/f"],
              "volumeMounts": [{"name": "data", "mountPath": "/data"}]}
    reader = {"name": "reader", "image": "x",
              "command": ["sh", "-c", "until [ -f /in/f ]; do sleep 0.1; done; cat /in/f; while true; do sleep 0.1; done"],
              "volumeMounts": [{"name": "data", "mountPath": "/in", "readOnly": True}]}
    rest.post(f"/api/v1/namespaces/{namespace}/pods", {"metadata": {"name": "pair"}, "spec": {
        "restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "containers": [writer, reader],
        "volumes": [{"name": "data", "emptyDir": {}}]}})

    def settled() -> dict[str, Any] | None:
        pod = get_pod(rest, namespace, "pair")
        states = {c["name"]: c["state"] for c in (pod or {}).get("status", {}).get("containerStatuses") or []}
        if "terminated" in states.get("writer", {}) and "running" in states.get("reader", {}):
            return pod
        return None

    pod = wait_for("writer done, reader running", settled)
    assert pod["status"]["phase"] == "Running"
    statuses = {c["name"]: c for c in pod["status"]["containerStatuses"]}
    assert statuses["writer"]["state"]["terminated"]["exitCode"] == 0
    assert statuses["reader"]["ready"] is True
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "False"
    wait_for("reader saw the file", lambda: local_node.log_file(namespace, "pair", "reader").read_text() == "shared\n")


def test_restart_policy_always_restarts_and_counts_with_exit_code_and_log_fallback(
    local_node: LocalNode, rest: KubeRest, namespace: str
):
    rest.post(f"/api/v1/namespaces/{namespace}/pods", simple_pod(
        "crash", "echo starting; echo 'it broke' >&2; exit 3",
        container={"terminationMessagePolicy": "FallbackToLogsOnError"}))
    pod = wait_for("two restarts", lambda: (p := get_pod(rest, namespace, "crash"))
                   and container_status(p).get("restartCount", 0) >= 2 and p)
    status = container_status(pod)
    assert pod["status"]["phase"] == "Running"
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert status["lastState"]["terminated"]["reason"] == "Error"
    assert status["lastState"]["terminated"]["message"] == "starting\nit broke"


def test_termination_message_file_and_restart_policy_never(local_node: LocalNode, rest: KubeRest, namespace: str):
    rest.post(f"/api/v1/namespaces/{namespace}/pods", simple_pod(
        "done", "echo 'all good' > /dev/termination-log", restartPolicy="Never"))
    rest.post(f"/api/v1/namespaces/{namespace}/pods", simple_pod(
        "fails", "echo not-the-message; exit 7", restartPolicy="Never"))
    done = wait_for("done Succeeded", lambda: (p := get_pod(rest, namespace, "done"))
                    and p["status"].get("phase") == "Succeeded" and p)
    terminated = container_status(done)["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"], terminated["message"]) == (0, "Completed", "all good")
    fails = wait_for("fails Failed", lambda: (p := get_pod(rest, namespace, "fails"))
                     and p["status"].get("phase") == "Failed" and p)
    terminated = container_status(fails)["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (7, "Error")
    assert "message" not in terminated  # policy File and an empty file: no message
    assert container_status(fails)["restartCount"] == 0


def test_deletion_sends_sigterm_to_the_main_process_and_removes_the_pod(
    local_node: LocalNode, rest: KubeRest, namespace: str, node_state: Path
):
    script = "trap 'echo got SIGTERM; exit 0' TERM; echo ready; while true; do sleep 0.1; done"
    rest.post(f"/api/v1/namespaces/{namespace}/pods", simple_pod("graceful", script))
    pod = wait_for("running", lambda: (p := get_pod(rest, namespace, "graceful"))
                   and p["status"].get("phase") == "Running" and p)
    pid = pid_of(pod)
    log = node_state / "logs" / namespace / "graceful" / "main.log"
    wait_for("ready in the log", lambda: "ready" in log.read_text())
    started = time.monotonic()
    rest.delete(pod_path(namespace, "graceful"))
    wait_for("pod gone", lambda: get_pod(rest, namespace, "graceful") is None)
    assert time.monotonic() - started < 4  # it exited on SIGTERM, long before the 5 s grace
    assert log.read_text().endswith("got SIGTERM\n")
    assert not pid_alive(pid)


def test_a_process_ignoring_sigterm_is_killed_with_its_group_after_the_grace_period(
    local_node: LocalNode, rest: KubeRest, namespace: str, node_state: Path
):
    # The main process ignores SIGTERM and has a child: both die at the end of the grace period.
    script = "trap '' TERM; sleep 300 & echo child $!; while true; do sleep 0.1; done"
    rest.post(f"/api/v1/namespaces/{namespace}/pods", simple_pod("stubborn", script, terminationGracePeriodSeconds=1))
    pod = wait_for("running", lambda: (p := get_pod(rest, namespace, "stubborn"))
                   and p["status"].get("phase") == "Running" and p)
    log = node_state / "logs" / namespace / "stubborn" / "main.log"
    child = int(wait_for("child pid", lambda: log.read_text().split()[1:2])[0])
    pid = pid_of(pod)
    rest.delete(pod_path(namespace, "stubborn"))
    wait_for("pod gone", lambda: get_pod(rest, namespace, "stubborn") is None, timeout_s=10)
    assert not pid_alive(pid)
    assert not pid_alive(child)


# "secret": 1.20's ServiceAccount admission mounts the legacy token secret; "projected": the
# 1.21+ shape (TokenRequest token + kube-root-ca.crt + namespace), which the node materializes.
PROJECTED_TOKEN_VOLUME = {"name": "api-access", "projected": {"sources": [
    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
]}}


@pytest.mark.parametrize("token_volume", ["secret", "projected"])
def test_in_pod_client_uses_the_pods_service_account(local_node: LocalNode, rest: KubeRest, namespace: str,
                                                       node_state: Path, token_volume: str):
    rest.post(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles", {
        "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]})
    rest.post(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings", {
        "metadata": {"name": "pod-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": namespace}]})
    script = (
        "from kubernetes import client, config\n"
        "config.load_incluster_config()\n"
        "api = client.CoreV1Api()\n"
        "ns = open('/var/run/secrets/kubernetes.io/serviceaccount/namespace').read()\n"
        "print('read', api.read_namespaced_pod('reader', ns).metadata.name)\n"
        "try:\n"
        "    api.list_namespaced_secret(ns)\n"
        "except client.exceptions.ApiException as e:\n"
        "    print('secrets', e.status)\n"
    )
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "reader"}, "spec": {
        "restartPolicy": "Never",
        "containers": [{"name": "main", "image": "not-used", "command": ["python", "-c", script]}]}}
    if token_volume == "projected":
        pod["spec"]["automountServiceAccountToken"] = False
        pod["spec"]["volumes"] = [PROJECTED_TOKEN_VOLUME]
        pod["spec"]["containers"][0]["volumeMounts"] = [
            {"name": "api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True}]
    rest.post(f"/api/v1/namespaces/{namespace}/pods", pod)
    done = wait_for("reader finished", lambda: (p := get_pod(rest, namespace, "reader"))
                    and p["status"].get("phase") in ("Succeeded", "Failed") and p, timeout_s=60)
    log = (node_state / "logs" / namespace / "reader" / "main.log").read_text()
    assert done["status"]["phase"] == "Succeeded", log
    assert log == "read reader\nsecrets 403\n"


def test_pod_wanting_more_gpus_than_advertised_stays_pending_with_a_reason(
    local_node: LocalNode, rest: KubeRest, namespace: str
):
    rest.post(f"/api/v1/namespaces/{namespace}/pods", simple_pod(
        "greedy", "true", container={"resources": {"limits": {"nvidia.com/gpu": "1"}}}))
    pod = wait_for("Unschedulable condition", lambda: (p := get_pod(rest, namespace, "greedy"))
                   and any(c.get("reason") == "Unschedulable" for c in p["status"].get("conditions") or []) and p)
    assert not pod["spec"].get("nodeName")
    message = next(c["message"] for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    assert "wants 1 nvidia.com/gpu, the local node advertises 0" in message


def test_stop_kills_every_container_and_leaves_no_process(control_plane: Any, rest: KubeRest, namespace: str,
                                                          tmp_path: Path):
    # Its own node; the pod names it directly, so the module's node never binds it.
    own = LocalNode(control_plane.kubeconfig, tmp_path, "localnode-stop-test", stop_grace_s=1.0,
                    schedules=lambda _namespace: False)
    script = "trap '' TERM; sleep 300 & while true; do sleep 0.1; done"
    pod = simple_pod("two", script, nodeName="localnode-stop-test")
    pod["spec"]["containers"].append({"name": "second", "image": "x", "command": ["sleep", "300"]})
    with own:
        rest.post(f"/api/v1/namespaces/{namespace}/pods", pod)
        wait_for("two containers", lambda: len(own.container_pids()) == 2)
        pids = own.container_pids()
        wait_for("pod Running", lambda: (p := get_pod(rest, namespace, "two")) and p["status"].get("phase") == "Running")
        # signal_processes reaches descendants too (signal 0 only checks): both main processes
        # (the shell's command line names "sleep 300") and the shell's background sleep.
        # Waited for: a container's process execs its command only after its set-up, and the
        # shell starts its background sleep when it gets to it.
        matched = wait_for("both containers' sleeps and the shell's", lambda: (
            m := own.signal_processes(0, "sleep 300")) and set(pids) < set(m) and len(m) == 3 and m)
        assert len(matched) == 3, (pids, matched)
        assert own.signal_processes(0, "no such command") == []
    assert own.container_pids() == []
    assert not any(pid_alive(p) for p in pids)
    node = rest.get("/api/v1/nodes/localnode-stop-test")
    assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"] == "False"


def test_missing_config_map_waits_with_a_reason_then_starts_once_it_exists(
    local_node: LocalNode, rest: KubeRest, namespace: str
):
    env = [{"name": "G", "valueFrom": {"configMapKeyRef": {"name": "late", "key": "greeting"}}}]
    rest.post(f"/api/v1/namespaces/{namespace}/pods", simple_pod(
        "patient", 'echo "$G" > /dev/termination-log', restartPolicy="Never", container={"env": env}))
    waiting = wait_for("CreateContainerConfigError", lambda: (
        container_status(get_pod(rest, namespace, "patient")).get("state", {}).get("waiting", {}).get("reason")
        == "CreateContainerConfigError" and container_status(get_pod(rest, namespace, "patient"))))
    assert waiting["state"]["waiting"]["message"] == 'configmap "late" not found'
    rest.post(f"/api/v1/namespaces/{namespace}/configmaps", {"metadata": {"name": "late"}, "data": {"greeting": "hi"}})
    done = wait_for("Succeeded", lambda: (p := get_pod(rest, namespace, "patient"))
                    and p["status"].get("phase") == "Succeeded" and p)
    assert container_status(done)["state"]["terminated"]["message"] == "hi"


def test_a_command_that_cannot_start_is_a_start_error_with_the_reason(
    local_node: LocalNode, rest: KubeRest, namespace: str
):
    pod = simple_pod("typo", "", restartPolicy="Never")
    pod["spec"]["containers"][0]["command"] = ["no-such-program", "--flag"]
    rest.post(f"/api/v1/namespaces/{namespace}/pods", pod)
    failed = wait_for("Failed", lambda: (p := get_pod(rest, namespace, "typo")) and p["status"].get("phase") == "Failed" and p)
    terminated = container_status(failed)["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (128, "StartError")
    assert "cannot run 'no-such-program'" in terminated["message"]


def test_entry_point_runs_pods_and_stops_them_on_sigterm(control_plane: Any, rest: KubeRest, namespace: str,
                                                         tmp_path: Path):
    import signal
    import subprocess
    import sys

    cli = subprocess.Popen(
        [sys.executable, "-m", "devtools.localnode", "--kubeconfig", str(control_plane.kubeconfig),
         "--state-dir", str(tmp_path), "--name", "localnode-cli-test", "--only-namespace", namespace],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        rest.post(f"/api/v1/namespaces/{namespace}/pods",
                  simple_pod("cli", "while true; do sleep 0.1; done", nodeName="localnode-cli-test"))
        pod = wait_for("Running", lambda: (p := get_pod(rest, namespace, "cli")) and p["status"].get("phase") == "Running" and p)
        pid = pid_of(pod)
        cli.send_signal(signal.SIGTERM)
        output, _ = cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, output
    assert "local node localnode-cli-test stopped (1 container(s) stopped)" in output
    assert not pid_alive(pid)


ALL_REDUCE = """
import torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.tensor([dist.get_rank() + 1.0])
dist.all_reduce(t)
print("rank", dist.get_rank(), "of", dist.get_world_size(), "sum", t.item(), flush=True)
dist.destroy_process_group()
"""


@pytest.mark.training
def test_torchrun_rendezvous_across_two_pods_through_the_headless_service_name(
    local_node: LocalNode, rest: KubeRest, namespace: str, node_state: Path
):
    # What an SFTJob's pods do: torchrun on each, master = pod 0's DNS name, rank = ordinal.
    ns = namespace
    rest.post(f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": "script"}, "data": {"ar.py": ALL_REDUCE}})
    rest.post(f"/api/v1/namespaces/{ns}/services", {"metadata": {"name": "tj"}, "spec": {
        "clusterIP": "None", "publishNotReadyAddresses": True, "selector": {"app": "tj"}, "ports": [{"port": 29500}]}})
    command = (f"torchrun --nnodes 2 --nproc-per-node 1 --node-rank ${{POD##*-}} --master-addr tj-0.tj.{ns}.svc "
               "--master-port 29500 /etc/script/ar.py")
    rest.post(f"/apis/apps/v1/namespaces/{ns}/statefulsets", {"metadata": {"name": "tj"}, "spec": {
        "serviceName": "tj", "replicas": 2, "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": {"app": "tj"}},
        "template": {"metadata": {"labels": {"app": "tj"}}, "spec": {
            "containers": [{"name": "trainer", "image": "not-used", "command": ["sh", "-c", command + "; sleep 600"],
                            "env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                            "volumeMounts": [{"name": "s", "mountPath": "/etc/script"}]}],
            "volumes": [{"name": "s", "configMap": {"name": "script"}}]}}}})
    for rank in (0, 1):
        log = node_state / "logs" / ns / f"tj-{rank}" / "trainer.log"
        wait_for(f"rank {rank}'s all_reduce", lambda: log.exists() and f"rank {rank} of 2 sum 3.0" in log.read_text(),
                 timeout_s=180)


def test_pods_of_namespaces_the_node_does_not_schedule_stay_pending(
    local_node: LocalNode, rest: KubeRest, namespace: str
):
    other = f"{namespace}-other"
    rest.post("/api/v1/namespaces", {"metadata": {"name": other}})
    try:
        # No token volume wanted, so the fresh namespace's token secret need not exist yet.
        rest.post(f"/api/v1/namespaces/{other}/pods",
                  simple_pod("elsewhere", "true", automountServiceAccountToken=False))
        rest.post(f"/api/v1/namespaces/{namespace}/pods", simple_pod("here", "sleep 30"))
        # The node handles events in order: once `here` runs, it has seen `elsewhere` too.
        wait_for("here Running", lambda: (p := get_pod(rest, namespace, "here")) and p["status"].get("phase") == "Running")
        elsewhere = get_pod(rest, other, "elsewhere")
        assert elsewhere is not None and not elsewhere["spec"].get("nodeName")
    finally:
        rest.delete(f"/api/v1/namespaces/{other}")


def test_a_restarted_node_reruns_unfinished_pods_and_never_finished_ones(
    control_plane: Any, rest: KubeRest, namespace: str, tmp_path: Path
):
    name = "localnode-restart-test"
    pinned = {"nodeName": name, "restartPolicy": "Never"}
    with LocalNode(control_plane.kubeconfig, tmp_path, name, schedules=lambda _ns: False) as first:
        rest.post(f"/api/v1/namespaces/{namespace}/pods", simple_pod("finished", "echo ran", **pinned))
        rest.post(f"/api/v1/namespaces/{namespace}/pods", simple_pod("unfinished", "echo ran; sleep 300", **pinned))
        wait_for("finished Succeeded", lambda: get_pod(rest, namespace, "finished")["status"].get("phase") == "Succeeded")
        running = wait_for("unfinished Running", lambda: (p := get_pod(rest, namespace, "unfinished"))
                           and p["status"].get("phase") == "Running" and p)
        old_pid = pid_of(running)
        assert first.container_pids() == [old_pid]
    assert not pid_alive(old_pid)
    with LocalNode(control_plane.kubeconfig, tmp_path, name, schedules=lambda _ns: False) as second:
        wait_for("unfinished running again", lambda: second.container_pids())
        log = second.log_file(namespace, "unfinished", "main")
        wait_for("second run's output", lambda: log.read_text() == "ran\nran\n")
        assert get_pod(rest, namespace, "finished")["status"]["phase"] == "Succeeded"
        assert second.log_file(namespace, "finished", "main").read_text() == "ran\n"
