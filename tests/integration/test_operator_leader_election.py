"""One active operator: two replicas (`run --leader-elect`), each with its own ServiceAccount so
the audit log tells their writes apart; the leader is killed (SIGKILL) in the middle of 20 jobs;
the standby takes the Lease over within 15 s and brings every job to its right state, and no
second of the audit log holds writes of both."""

from __future__ import annotations

import datetime
import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from sftjobs import job_body

from devtools import stack
from devtools.controlplane import WRITE_VERBS, service_account_kubeconfig
from sft_core import contract
from sft_core.progress import Stage, TrainingProgress

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
LEASE = "sft-operator"
FAILOVER_BOUND_S = 15.0
T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
SUCCEED_BEFORE, SUCCEED_AFTER = [f"j{i:02d}" for i in range(0, 5)], [f"j{i:02d}" for i in range(5, 10)]
FAIL_BEFORE, FAIL_AFTER = [f"j{i:02d}" for i in range(10, 13)], [f"j{i:02d}" for i in range(13, 15)]
SUSPEND_AFTER, KEEP_RUNNING = [f"j{i:02d}" for i in range(15, 18)], [f"j{i:02d}" for i in range(18, 20)]
JOBS = SUCCEED_BEFORE + SUCCEED_AFTER + FAIL_BEFORE + FAIL_AFTER + SUSPEND_AFTER + KEEP_RUNNING


def operator_rules() -> list[dict[str, Any]]:
    block = re.search(r"As a ClusterRole:\s*```yaml\n(.*?)```", (ROOT / "docs" / "rbac.md").read_text(), re.S)
    assert block, "docs/rbac.md lost its ClusterRole block"
    return yaml.safe_load(block.group(1))["rules"]


def replica_kubeconfig(control_plane: Any, api_client: Any, namespace: str, name: str, path: Path) -> Path:
    """A ServiceAccount of its own per replica: the operator's rules and the Lease (as the chart grants)."""
    core = kubernetes.client.CoreV1Api(api_client)
    rbac = kubernetes.client.RbacAuthorizationV1Api(api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    rules = operator_rules() + [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}
    ]
    rbac.create_namespaced_role(namespace, {"metadata": {"name": name}, "rules": rules})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    )
    return service_account_kubeconfig(control_plane, namespace, name, path)


def holder(api_client: Any, namespace: str) -> str:
    try:
        lease = kubernetes.client.CoordinationV1Api(api_client).read_namespaced_lease(LEASE, namespace)
    except kubernetes.client.exceptions.ApiException as exc:
        if exc.status == 404:
            return ""
        raise
    return lease.spec.holder_identity or ""


def completed(samples: int = 200) -> TrainingProgress:
    return TrainingProgress(
        stage=Stage.COMPLETED,
        epoch=2,
        num_epochs=2,
        epoch_display="2/2",
        samples_seen=samples,
        total_samples=samples,
        percent=100,
        percent_display="100%",
        last_loss="0.4321",
        throughput="12.50",
        eta_seconds=0,
        checkpoints=[],
        latest_checkpoint=None,
        latest_full_state=None,
        resumable=False,
        last_update_time=T1,
    )


def succeed(cluster: Any, name: str) -> None:
    """What the reporter publishes when training completed."""
    body = {"data": {contract.PROGRESS_KEY: json.dumps(completed().to_api(), sort_keys=True)}}
    cluster.core.patch_namespaced_config_map(f"{name}-progress", cluster.ns, body)


def reject_config(cluster: Any, name: str) -> None:
    """What a kubelet reports when the launcher refused the config (exit code 2): Failed, ConfigRejected."""

    def container(cname: str, last: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "name": cname,
            "image": "img",
            "imageID": "",
            "ready": last is None,
            "started": last is None,
            "restartCount": 1 if last else 0,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}} if last else {"running": {"startedAt": T0}},
            "lastState": {"terminated": last} if last else {},
        }

    rejected = {
        "exitCode": contract.EXIT_BAD_CONFIG,
        "reason": "Error",
        "startedAt": T0,
        "finishedAt": T1,
        "message": "sft-launcher: training.json: max_seq_len must be positive",
    }
    cluster.core.patch_namespaced_pod_status(
        f"{name}-0",
        cluster.ns,
        {
            "status": {
                "phase": "Running",
                "containerStatuses": [container(contract.TRAINER_CONTAINER, rejected), container("reporter", None)],
            }
        },
    )


def writes_by_user(control_plane: Any, since: int, users: set[str]) -> list[tuple[datetime.datetime, str, str]]:
    """(time received, user, what) of every write request by ``users`` in the audit log after ``since``."""
    with control_plane.audit_log.open("rb") as f:
        f.seek(since)
        lines = f.read().decode(errors="replace").splitlines()
    out = []
    for line in lines:
        event = json.loads(line) if line.strip().startswith("{") else {}
        user = (event.get("user") or {}).get("username", "")
        if event.get("stage") != "ResponseComplete" or event.get("verb") not in WRITE_VERBS or user not in users:
            continue
        at = datetime.datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00"))
        ref = event.get("objectRef") or {}
        out.append((at, user, f"{event['verb']} {ref.get('resource')}/{ref.get('name')} {ref.get('subresource', '')}"))
    return sorted(out)


def phases(cluster: Any) -> dict[str, str]:
    items = cluster.custom.list_namespaced_custom_object(contract.GROUP, contract.VERSION, cluster.ns, contract.PLURAL)[
        "items"
    ]
    return {job["metadata"]["name"]: (job.get("status") or {}).get("phase", "") for job in items}


def test_standby_takes_over_within_15_s_and_never_writes_beside_the_leader(
    control_plane: Any,
    api_client: Any,
    crd: str,
    namespace: str,
    cluster: Any,
    tmp_path: Path,
) -> None:
    users = {name: f"system:serviceaccount:{namespace}:{name}" for name in ("operator-a", "operator-b")}
    replicas = {
        name: stack.OperatorProcess(
            replica_kubeconfig(control_plane, api_client, namespace, name, tmp_path / f"{name}.kubeconfig"),
            [namespace],
            tmp_path / f"{name}.log",
            ["--leader-elect", "--leader-election-namespace", namespace, "--leader-election-id", name],
        )
        for name in users
    }
    try:
        run_through_a_failover(control_plane, api_client, namespace, cluster, replicas, users)
    finally:
        for name, replica in replicas.items():
            replica.stop()
            print(f"--- {name} log ---\n{replica.logs()[-5000:]}")


def run_through_a_failover(
    control_plane: Any,
    api_client: Any,
    namespace: str,
    cluster: Any,
    replicas: dict[str, stack.OperatorProcess],
    users: dict[str, str],
) -> None:
    first, second = replicas["operator-a"], replicas["operator-b"]
    first.start()
    cluster.wait_for("operator-a to lead", lambda: holder(api_client, namespace) == "operator-a")
    mark = control_plane.audit_position()
    second.start()

    for name in JOBS:
        cluster.create_job(job_body(name, nnodes=1))
    for name in JOBS:
        cluster.run_all_pods(name, 1)
    cluster.wait_for("every job Running", lambda: set(phases(cluster).values()) == {"Running"}, timeout_s=60)
    assert holder(api_client, namespace) == "operator-a"  # the standby took nothing

    # Mid-run: the leader is handling these when it dies; the rest happen while it is dead.
    for name in SUCCEED_BEFORE:
        succeed(cluster, name)
    for name in FAIL_BEFORE:
        reject_config(cluster, name)
    killed_at = time.monotonic()
    first.stop(signal.SIGKILL)
    for name in SUCCEED_AFTER:
        succeed(cluster, name)
    for name in FAIL_AFTER:
        reject_config(cluster, name)
    for name in SUSPEND_AFTER:
        cluster.patch_job(name, {"spec": {"suspend": True}})
    cluster.wait_for(
        "operator-b to lead",
        lambda: holder(api_client, namespace) == "operator-b",
        timeout_s=FAILOVER_BOUND_S + 5,
        interval_s=0.05,
    )
    failover_s = time.monotonic() - killed_at
    print(f"failover: operator-b holds the Lease {failover_s:.1f} s after operator-a was killed")
    assert failover_s <= FAILOVER_BOUND_S

    expected = {
        **dict.fromkeys(SUCCEED_BEFORE + SUCCEED_AFTER, "Succeeded"),
        **dict.fromkeys(FAIL_BEFORE + FAIL_AFTER, "Failed"),
        **dict.fromkeys(SUSPEND_AFTER, "Suspended"),
        **dict.fromkeys(KEEP_RUNNING, "Running"),
    }
    try:
        cluster.wait_for("every job in its state", lambda: phases(cluster) == expected, timeout_s=60)
    finally:
        print("phases:", {name: phase for name, phase in phases(cluster).items() if phase != expected[name]})
    for name in JOBS:
        replicas = 1 if name in KEEP_RUNNING else 0
        cluster.wait_for(
            f"{name}'s StatefulSet at {replicas}",
            lambda name=name, replicas=replicas: cluster.statefulset(name)["spec"]["replicas"] == replicas,
        )
    for name in FAIL_BEFORE + FAIL_AFTER:
        failed = cluster.condition(name, "Failed")
        assert failed and failed["reason"] == "ConfigRejected", failed
    assert second.alive()

    writes = writes_by_user(control_plane, mark, set(users.values()))
    by = {name: [w for w in writes if w[1] == user] for name, user in users.items()}
    assert by["operator-a"] and by["operator-b"], writes  # both wrote: the check below can fail
    first_of_b = by["operator-b"][0][0]
    last_of_a = by["operator-a"][-1][0]
    print(
        f"writes: operator-a {len(by['operator-a'])} (last {last_of_a.time()}), "
        f"operator-b {len(by['operator-b'])} (first {first_of_b.time()}: {by['operator-b'][0][2]}); "
        f"first job write by operator-b {next(w[0] for w in by['operator-b'] if 'leases' not in w[2]).time()}"
    )
    assert by["operator-b"][0][2].startswith("update leases/"), by["operator-b"][:3]  # its first write: the take-over
    assert last_of_a < first_of_b
    seconds = {name: {w[0].replace(microsecond=0) for w in ws} for name, ws in by.items()}
    assert not seconds["operator-a"] & seconds["operator-b"]
