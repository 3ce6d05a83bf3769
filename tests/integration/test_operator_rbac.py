"""The operator works with exactly the permissions docs/rbac.md lists (the apiserver runs RBAC)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from sft_operator.dev.controlplane import service_account_kubeconfig

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def documented_rules() -> list[dict[str, Any]]:
    text = (ROOT / "docs" / "rbac.md").read_text()
    block = re.search(r"As a ClusterRole:\s*```yaml\n(.*?)```", text, re.S)
    assert block, "docs/rbac.md lost its ClusterRole block"
    return yaml.safe_load(block.group(1))["rules"]


def job_body(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "SFTJob",
        "metadata": {"name": name},
        "spec": {
            "modelPath": "/models/tiny", "dataPath": "/data/train.jsonl", "numEpochs": 1,
            "effectiveBatchSize": 4, "learningRate": 1e-4, "maxSeqLen": 128, "nnodes": 2, "device": "cpu",
            "checkpoints": {"claim": {"size": "1Gi"}},
        },
    }
    body["spec"].update(spec)
    return body


@pytest.fixture
def operator_kubeconfig(control_plane: Any, api_client: Any, namespace: str, tmp_path: Path) -> Any:
    rbac = kubernetes.client.RbacAuthorizationV1Api(api_client)
    core = kubernetes.client.CoreV1Api(api_client)
    name = f"sft-operator-{namespace}"
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "sft-operator"}})
    rbac.create_cluster_role({"metadata": {"name": name}, "rules": documented_rules()})
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": "sft-operator", "namespace": namespace}],
        }
    )
    try:
        yield service_account_kubeconfig(control_plane, namespace, "sft-operator", tmp_path / "operator.kubeconfig")
    finally:
        rbac.delete_cluster_role_binding(name)
        rbac.delete_cluster_role(name)


def test_documented_permissions_are_enough(operator_as: Any, operator_kubeconfig: Path, cluster: Any) -> None:
    op = operator_as(operator_kubeconfig)
    cluster.core.create_namespaced_persistent_volume_claim(
        cluster.ns,
        {"metadata": {"name": "rwo"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
    )
    cluster.create_job(job_body("ok"))
    cluster.create_job(job_body("shared", checkpoints={"existingClaim": "rwo"}))
    cluster.create_job(job_body("bad", extraArgs={"nope": 1}))
    cluster.wait_for("the StatefulSet", lambda: cluster.statefulset("ok"))
    cluster.run_all_pods("ok", 2)
    cluster.wait_for("Running", lambda: cluster.status("ok").get("phase") == "Running")
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
        lambda: (cluster.read("PersistentVolumeClaim", "ok-checkpoints")["metadata"].get("ownerReferences") or [None])[0],
    )
    # kopf's resource scanning and watches ran with the same identity
    op.restart()
    cluster.patch_job("ok", {"spec": {"suspend": False}})
    cluster.wait_for("replicas back", lambda: cluster.statefulset("ok")["spec"]["replicas"] == 2)
    assert "403" not in op.logs() and "Forbidden" not in op.logs()
