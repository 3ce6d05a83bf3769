"""The operator works with exactly the permissions docs/rbac.md lists (the apiserver runs RBAC)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from operator_logs import refusals
from sftjobs import job_body

from devtools.controlplane import service_account_kubeconfig

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def documented_rules() -> list[dict[str, Any]]:
    text = (ROOT / "docs" / "rbac.md").read_text()
    block = re.search(r"As a ClusterRole:\s*```yaml\n(.*?)```", text, re.S)
    assert block, "docs/rbac.md lost its ClusterRole block"
    return yaml.safe_load(block.group(1))["rules"]


BINDINGS = ("ClusterRole", "Role")


@pytest.fixture(params=BINDINGS)
def operator_kubeconfig(
    request: pytest.FixtureRequest, control_plane: Any, api_client: Any, namespace: str, tmp_path: Path
) -> Any:
    """A ServiceAccount holding exactly docs/rbac.md's rules: as a ClusterRole bound cluster-wide,
    or as a Role bound in the watched namespace only (nothing cluster-scoped at all)."""
    rbac = kubernetes.client.RbacAuthorizationV1Api(api_client)
    core = kubernetes.client.CoreV1Api(api_client)
    name = f"sft-operator-{namespace}"
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "sft-operator"}})
    subjects = [{"kind": "ServiceAccount", "name": "sft-operator", "namespace": namespace}]
    if request.param == "ClusterRole":
        rbac.create_cluster_role({"metadata": {"name": name}, "rules": documented_rules()})
        rbac.create_cluster_role_binding(
            {
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                "subjects": subjects,
            }
        )
    else:
        rbac.create_namespaced_role(namespace, {"metadata": {"name": name}, "rules": documented_rules()})
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": subjects,
            },
        )
    try:
        yield service_account_kubeconfig(control_plane, namespace, "sft-operator", tmp_path / "operator.kubeconfig")
    finally:
        if request.param == "ClusterRole":
            rbac.delete_cluster_role_binding(name)
            rbac.delete_cluster_role(name)


def test_documented_rules_are_namespaced() -> None:
    """Nothing cluster-scoped: kopf's scanning is disabled, so a Role can hold every rule."""
    groups = {
        (group, resource)
        for rule in documented_rules()
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert ("apiextensions.k8s.io", "customresourcedefinitions") not in groups
    assert ("", "namespaces") not in groups


def test_refusals_are_found_and_timestamps_are_not() -> None:
    log = (
        "2026-01-01 00:00:00,403 INFO kopf ok\n"
        "2026-01-01 00:00:01,000 ERROR kopf.objects Handler 'reconcile' failed: (403)\nReason: Forbidden\n"
        "2026-01-01 00:00:02,000 WARNING kopf Not enough permissions to list namespaces.\n"
        "2026-01-01 00:00:03,000 ERROR kopf.objects Handler 'reconcile' failed: (403)\nReason: Forbidden\n"
        '{"reason":"NamespaceTerminating"}\n'
    )
    assert refusals(log) == [
        "ERROR kopf.objects Handler 'reconcile' failed: (403)",
        "WARNING kopf Not enough permissions to list namespaces.",
    ]


def test_documented_permissions_are_enough(operator_as: Any, operator_kubeconfig: Path, cluster: Any) -> None:
    op = operator_as(operator_kubeconfig)
    cluster.core.create_namespaced_persistent_volume_claim(
        cluster.ns,
        {
            "metadata": {"name": "rwo"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )
    cluster.create_job(job_body("ok"))
    cluster.create_job(job_body("shared", checkpoints={"existingClaim": "rwo"}))
    cluster.create_job(job_body("bad", extraArgs={"nope": 1}))
    cluster.wait_for("the StatefulSet", lambda: cluster.statefulset("ok"))
    # The reporter's per-job identity, created with the operator's own rights (the API server
    # refuses a Role that grants more than its creator holds).
    rbac = kubernetes.client.RbacAuthorizationV1Api(cluster.client)
    assert cluster.core.read_namespaced_service_account("ok", cluster.ns).metadata.name == "ok"
    role = rbac.read_namespaced_role("ok-reporter", cluster.ns)
    assert [(r.resources, r.resource_names, r.verbs) for r in role.rules] == [
        (["configmaps"], ["ok-progress"], ["get", "patch"])
    ]
    binding = rbac.read_namespaced_role_binding("ok-reporter", cluster.ns)
    assert [(s.kind, s.name) for s in binding.subjects] == [("ServiceAccount", "ok")]
    assert cluster.read("ConfigMap", "ok-progress") is not None
    cluster.run_all_pods("ok", 2)
    cluster.wait_for("Running", lambda: cluster.status("ok").get("phase") == "Running")
    # The progress ConfigMap is watched with the same identity.
    summary = {
        "stage": "Training",
        "epoch": 1,
        "numEpochs": 1,
        "epochDisplay": "1/1",
        "percent": 5,
        "percentDisplay": "5%",
        "samplesSeen": 2,
        "checkpoints": [],
        "resumable": False,
    }
    cluster.core.patch_namespaced_config_map(
        "ok-progress", cluster.ns, {"data": {"progress.json": json.dumps(summary)}}
    )
    cluster.wait_for("status.progress", lambda: cluster.status("ok").get("progress", {}).get("samplesSeen") == 2)
    cluster.wait_for("Failed", lambda: cluster.status("bad").get("phase") == "Failed")
    cluster.wait_for("an Event", lambda: any(e["reason"] == "Failed" for e in cluster.events("bad")))
    volume = cluster.wait_for("the shared job's volume check", lambda: cluster.condition("shared", "CheckpointVolume"))
    assert (volume["status"], volume["reason"]) == ("False", "NotReadWriteMany"), volume
    assert "ReadWriteMany" in volume["message"]
    assert cluster.condition("ok", "CheckpointVolume")["status"] == "True"
    # updates: the StatefulSet (suspend), the claim's owner reference (deleteWithJob)
    cluster.patch_job("ok", {"spec": {"suspend": True, "checkpoints": {"deleteWithJob": True}}})
    cluster.wait_for("Suspended", lambda: cluster.status("ok").get("phase") == "Suspended")
    cluster.wait_for(
        "the claim owned by the job",
        lambda: (cluster.read("PersistentVolumeClaim", "ok-checkpoints")["metadata"].get("ownerReferences") or [None])[
            0
        ],
    )
    # A restart resumes with the same identity
    op.restart()
    cluster.patch_job("ok", {"spec": {"suspend": False}})
    cluster.wait_for("replicas back", lambda: cluster.statefulset("ok")["spec"]["replicas"] == 2)
    assert refusals(op.logs()) == []
