"""The local node's pure parts: pod spec -> launch plan, /etc/hosts, status, scheduling."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from devtools.localnode_plan import (
    INJECTED_TOKEN_VOLUME,
    SERVICE_ACCOUNT_MOUNT_PATH,
    ContainerState,
    EnvSources,
    Mount,
    PodConfigError,
    Terminated,
    container_plan,
    exit_code_of,
    expand_refs,
    grace_period_s,
    hosts_file,
    next_backoff,
    pod_phase,
    pod_status,
    referenced_objects,
    resolve_env,
    should_restart,
    tail_of_log,
    termination_message,
    unschedulable_reason,
    volume_dirs,
)
from devtools.localnode_volumes import downward_files, key_files, object_data, persistent_volume_for

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
T1 = datetime(2026, 1, 2, 3, 4, 9, tzinfo=timezone.utc)
STATE = Path("/state")


def make_pod(**spec: object) -> dict:
    return {
        "metadata": {"name": "job-1", "namespace": "ns", "uid": "uid-1", "labels": {"app": "job"}},
        "spec": {"hostname": "job-1", "subdomain": "job", "automountServiceAccountToken": False,
                 "containers": [{"name": "trainer", "command": ["sft-trainer"]}], **spec},
    }


def test_env_resolves_values_field_refs_config_maps_secrets_and_references_in_order():
    container = {
        "name": "trainer",
        "envFrom": [{"configMapRef": {"name": "all"}, "prefix": "CM_"}],
        "env": [
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "greeting"}}},
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
            {"name": "MISSING", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "nope", "optional": True}}},
            {"name": "ADDR", "value": "$(POD).job.$(NS).svc:$(UNDEFINED)$$(POD)"},
        ],
    }
    sources = EnvSources(config_maps={"cm": {"greeting": "hello"}, "all": {"X": "1"}}, secrets={"s": {"pw": "pa55"}})
    env = resolve_env(make_pod(), container, {"PATH": "/venv/bin:/usr/bin"}, sources)
    assert env == {
        "PATH": "/venv/bin:/usr/bin",
        "CM_X": "1",
        "POD": "job-1",
        "NS": "ns",
        "IP": "127.0.0.1",
        "APP": "job",
        "GREETING": "hello",
        "PASSWORD": "pa55",
        "ADDR": "job-1.job.ns.svc:$(UNDEFINED)$(POD)",
    }


@pytest.mark.parametrize(
    ("var", "message"),
    [
        ({"name": "A", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k"}}}, 'configmap "absent" not found'),
        ({"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "nokey"}}}, "couldn't find key nokey in secret s"),
        ({"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "spec.nonsense"}}}, "fieldRef 'spec.nonsense' is not supported"),
    ],
)
def test_env_errors_say_what_is_missing(var: dict, message: str):
    with pytest.raises(PodConfigError, match=message):
        resolve_env(make_pod(), {"name": "c", "env": [var]}, {}, EnvSources(secrets={"s": {"pw": "x"}}))


def test_expand_refs_follows_kubernetes_rules():
    assert expand_refs("$(A)-$(B)-$$(A)-$", {"A": "a"}) == "a-$(B)-$(A)-$"


def test_volume_dirs_map_each_volume_kind_to_its_local_directory():
    pod = make_pod(volumes=[
        {"name": "ckpt", "persistentVolumeClaim": {"claimName": "job-checkpoints"}},
        {"name": "cfg", "configMap": {"name": "job-config"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        {"name": "host", "hostPath": {"path": "/opt/models"}},
    ])
    assert volume_dirs(pod, STATE) == {
        "ckpt": Path("/state/volumes/ns/job-checkpoints"),
        "cfg": Path("/state/pods/uid-1/volumes/cfg"),
        "dshm": Path("/state/pods/uid-1/volumes/dshm"),
        "host": Path("/opt/models"),
    }


def test_unsupported_volume_is_a_clear_error():
    pod = make_pod(volumes=[{"name": "nfs", "nfs": {"server": "x", "path": "/"}}])
    with pytest.raises(PodConfigError, match="volume 'nfs' of type nfs is not supported"):
        volume_dirs(pod, STATE)


def test_container_plan_is_exact():
    container = {
        "name": "trainer",
        "image": "ignored:latest",
        "command": ["sft-trainer"],
        "args": ["--rank", "$(POD)"],
        "workingDir": "/workspace",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "volumeMounts": [
            {"name": "cfg", "mountPath": "/etc/sft", "readOnly": True},
            {"name": "ckpt", "mountPath": "/checkpoints/"},
            {"name": "ckpt", "mountPath": "/checkpoints/sub/inner", "subPath": "run1"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }
    pod = make_pod(containers=[container], volumes=[
        {"name": "ckpt", "persistentVolumeClaim": {"claimName": "c"}},
        {"name": "cfg", "configMap": {"name": "job-config"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ])
    plan = container_plan(
        pod, container, base_env={"PATH": "/venv/bin"}, sources=EnvSources(),
        dirs=volume_dirs(pod, STATE), hosts_file=Path("/state/pods/uid-1/etc-hosts"),
        termination_log=Path("/state/pods/uid-1/containers/trainer/termination-log"),
        default_working_dir=Path("/state/pods/uid-1/containers/trainer/workdir"),
    )
    assert plan.argv == ["sft-trainer", "--rank", "job-1"]
    assert plan.env == {"PATH": "/venv/bin", "POD": "job-1"}
    assert plan.working_dir == "/workspace"
    assert plan.hostname == "job-1"
    assert plan.fallback_to_logs is True
    assert plan.mounts == [
        Mount("/state/volumes/ns/c", "/checkpoints", False),
        Mount("/state/pods/uid-1/volumes/cfg", "/etc/sft", True),
        Mount("/state/pods/uid-1/volumes/dshm", "/dev/shm", False),
        Mount("/state/pods/uid-1/etc-hosts", "/etc/hosts", False),
        Mount("/state/pods/uid-1/containers/trainer/termination-log", "/dev/termination-log", False),
        Mount("/state/volumes/ns/c/run1", "/checkpoints/sub/inner", False),
    ]


def test_container_without_command_is_rejected_since_images_are_ignored():
    pod = make_pod(containers=[{"name": "c", "image": "busybox", "args": ["x"]}])
    with pytest.raises(PodConfigError, match="no command"):
        container_plan(pod, pod["spec"]["containers"][0], base_env={}, sources=EnvSources(), dirs={},
                       hosts_file=Path("/h"), termination_log=Path("/t"), default_working_dir=Path("/w"))


def test_token_volume_is_injected_unless_the_pod_has_one_or_opts_out():
    pod = make_pod()
    pod["spec"].pop("automountServiceAccountToken")
    dirs = volume_dirs(pod, STATE)
    assert dirs[INJECTED_TOKEN_VOLUME] == Path(f"/state/pods/uid-1/volumes/{INJECTED_TOKEN_VOLUME}")
    plan = container_plan(pod, pod["spec"]["containers"][0], base_env={}, sources=EnvSources(), dirs=dirs,
                          hosts_file=Path("/h"), termination_log=Path("/t"), default_working_dir=Path("/w"))
    assert Mount(str(dirs[INJECTED_TOKEN_VOLUME]), SERVICE_ACCOUNT_MOUNT_PATH, True) in plan.mounts
    assert referenced_objects(pod) == ({"kube-root-ca.crt"}, set())

    pod["spec"]["volumes"] = [{"name": "tok", "secret": {"secretName": "default-token-x"}}]
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "tok", "mountPath": SERVICE_ACCOUNT_MOUNT_PATH}]
    assert INJECTED_TOKEN_VOLUME not in volume_dirs(pod, STATE)
    assert referenced_objects(pod) == (set(), {"default-token-x"})


def test_hosts_file_resolves_own_fqdn_services_and_peers_behind_headless_services():
    me = make_pod()
    peer = make_pod(hostname="job-0")
    peer["metadata"] = {**peer["metadata"], "name": "job-0", "uid": "uid-0"}
    stray = make_pod(hostname="x-0", subdomain="not-a-service")
    services = [
        {"metadata": {"name": "job", "namespace": "ns"}, "spec": {"clusterIP": "None"}},
        {"metadata": {"name": "api", "namespace": "other"}, "spec": {"clusterIP": "10.0.0.5"}},
    ]
    assert hosts_file(me, [me, peer, stray], services) == "\n".join([
        "# Written by the sft-operator dev local node: cluster names resolve to this machine.",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "127.0.0.1\tjob-1.job.ns.svc.cluster.local job-1",
        "127.0.0.1\tapi.other",
        "127.0.0.1\tapi.other.svc",
        "127.0.0.1\tapi.other.svc.cluster.local",
        "127.0.0.1\tjob",
        "127.0.0.1\tjob-0.job",
        "127.0.0.1\tjob-0.job.ns",
        "127.0.0.1\tjob-0.job.ns.svc",
        "127.0.0.1\tjob-0.job.ns.svc.cluster.local",
        "127.0.0.1\tjob-1.job",
        "127.0.0.1\tjob-1.job.ns",
        "127.0.0.1\tjob-1.job.ns.svc",
        "127.0.0.1\tjob.ns",
        "127.0.0.1\tjob.ns.svc",
        "127.0.0.1\tjob.ns.svc.cluster.local",
    ]) + "\n"


def test_only_advertised_extended_resources_are_enforced():
    gpu_pod = make_pod(containers=[{"name": "t", "command": ["x"],
                                    "resources": {"limits": {"nvidia.com/gpu": "2", "cpu": "64"}}}])
    assert unschedulable_reason(gpu_pod, {"cpu": "2", "nvidia.com/gpu": "2"}) is None
    reason = unschedulable_reason(gpu_pod, {"cpu": "2"})
    assert reason is not None and "wants 2 nvidia.com/gpu, the local node advertises 0" in reason
    odd = make_pod(containers=[{"name": "t", "command": ["x"], "resources": {"limits": {"example.com/fpga": "500m"}}}])
    assert unschedulable_reason(odd, {"example.com/fpga": "1"}) == (
        "container 't' wants '500m' example.com/fpga: extended resources are whole numbers")


@pytest.mark.parametrize(("policy", "code", "expected"), [
    ("Always", 0, True), ("Always", 1, True), ("OnFailure", 0, False), ("OnFailure", 2, True),
    ("Never", 1, False),
])
def test_restart_policy(policy: str, code: int, expected: bool):
    assert should_restart(policy, code) is expected


def test_backoff_doubles_to_the_cap_and_resets_after_a_long_run():
    delays, previous = [], None
    for _ in range(7):
        previous = next_backoff(previous, ran_for_s=1, base_s=10, cap_s=300)
        delays.append(previous)
    assert delays == [10, 20, 40, 80, 160, 300, 300]
    assert next_backoff(300, ran_for_s=601, base_s=10, cap_s=300) == 10


def _terminated(code: int, message: str = "") -> Terminated:
    return Terminated(exit_code=code, reason="Completed" if code == 0 else "Error", message=message,
                      started_at=T0, finished_at=T1)


@pytest.mark.parametrize(("states", "policy", "phase"), [
    ([ContainerState("a", "i", "waiting")], "Always", "Pending"),
    ([ContainerState("a", "i", "running"), ContainerState("b", "i", "terminated", terminated=_terminated(0))], "Never", "Running"),
    ([ContainerState("a", "i", "waiting", last_terminated=_terminated(1))], "Always", "Running"),
    ([ContainerState("a", "i", "terminated", terminated=_terminated(0))] * 2, "Never", "Succeeded"),
    ([ContainerState("a", "i", "terminated", terminated=_terminated(0)),
      ContainerState("b", "i", "terminated", terminated=_terminated(2))], "OnFailure", "Failed"),
])
def test_pod_phase(states: list[ContainerState], policy: str, phase: str):
    assert pod_phase(states, policy) == phase


def test_pod_status_is_exact_and_keeps_transition_times():
    crashed = ContainerState(
        "trainer", "img", "waiting", restart_count=2, waiting_reason="CrashLoopBackOff",
        waiting_message="back-off 20s", last_terminated=_terminated(3, "boom"), pid=42,
    )
    previous = [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
        {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:01Z"},
        {"type": "example.com/Gate", "status": "True"},
    ]
    status = pod_status([crashed], "Always", T0, previous, T1)
    assert status == {
        "phase": "Running",
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastProbeTime": None, "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "Initialized", "status": "True", "lastProbeTime": None, "lastTransitionTime": "2026-01-02T03:04:09Z"},
            {"type": "ContainersReady", "status": "False", "lastProbeTime": None, "lastTransitionTime": "2026-01-02T03:04:09Z",
             "reason": "ContainersNotReady", "message": "containers with unready status: [trainer]"},
            {"type": "Ready", "status": "False", "lastProbeTime": None, "lastTransitionTime": "2026-01-02T03:04:09Z",
             "reason": "ContainersNotReady", "message": "containers with unready status: [trainer]"},
            {"type": "example.com/Gate", "status": "True"},
        ],
        "hostIP": "127.0.0.1",
        "podIP": "127.0.0.1",
        "podIPs": [{"ip": "127.0.0.1"}],
        "startTime": "2026-01-02T03:04:05Z",
        "containerStatuses": [{
            "name": "trainer", "image": "img", "imageID": "", "ready": False, "started": False, "restartCount": 2,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}},
            "lastState": {"terminated": {"exitCode": 3, "reason": "Error", "message": "boom", "containerID": "",
                                         "startedAt": "2026-01-02T03:04:05Z", "finishedAt": "2026-01-02T03:04:09Z"}},
            "containerID": "localnode://42",
        }],
    }


def test_termination_message_prefers_the_file_then_falls_back_to_logs_on_error():
    assert termination_message("from file", "log", fallback_to_logs=True, exit_code=1) == "from file"
    assert termination_message("", "log tail", fallback_to_logs=True, exit_code=1) == "log tail"
    assert termination_message("", "log tail", fallback_to_logs=True, exit_code=0) == ""
    assert termination_message("", "log tail", fallback_to_logs=False, exit_code=1) == ""
    assert tail_of_log("".join(f"line {i}\n" for i in range(100))).splitlines()[0] == "line 20"


def test_signal_exit_codes_read_as_128_plus_signal():
    assert exit_code_of(-15) == (143, 15)
    assert exit_code_of(3) == (3, None)


def test_grace_period_prefers_the_deletion_request():
    pod = make_pod(terminationGracePeriodSeconds=7)
    assert grace_period_s(pod) == 7
    pod["metadata"]["deletionGracePeriodSeconds"] = 0
    assert grace_period_s(pod) == 0


def test_volume_file_contents():
    cm = {"data": {"a": "1", "training.json": "{}"}, "binaryData": {"b": "AAE="}}
    data = object_data(cm, "configmap")
    assert data == {"a": b"1", "training.json": b"{}", "b": b"\x00\x01"}
    assert key_files("configmap", "cm", data, [{"key": "a", "path": "dir/a.txt"}], optional=False) == {"dir/a.txt": b"1"}
    assert object_data({"data": {"pw": "cGE1NQ=="}}, "secret") == {"pw": b"pa55"}
    assert key_files("secret", "s", None, None, optional=True) == {}
    with pytest.raises(PodConfigError, match='secret "s" not found'):
        key_files("secret", "s", None, None, optional=False)
    with pytest.raises(PodConfigError, match="must be relative"):
        key_files("configmap", "cm", data, [{"key": "a", "path": "../escape"}], optional=False)
    items = [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]
    assert downward_files(make_pod(), items) == {"namespace": b"ns"}


def test_persistent_volume_is_prebound_to_the_claim():
    claim = {"metadata": {"name": "ckpt", "namespace": "ns", "uid": "u"},
             "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "5Gi"}}}}
    pv = persistent_volume_for(claim, Path("/state/volumes/ns/ckpt"), "localnode-ns-ckpt-u")
    assert pv["spec"] == {
        "capacity": {"storage": "5Gi"},
        "accessModes": ["ReadWriteMany"],
        "persistentVolumeReclaimPolicy": "Retain",
        "storageClassName": "",
        "hostPath": {"path": "/state/volumes/ns/ckpt", "type": "DirectoryOrCreate"},
        "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": "ns", "name": "ckpt", "uid": "u"},
    }
