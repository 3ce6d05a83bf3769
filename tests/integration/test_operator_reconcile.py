"""The operator on the real control plane: children, exact env, status, events."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sftjobs import job_body

from sft_models.models import parse_job
from sft_operator.render import render_configmap, render_service, render_statefulset

pytestmark = pytest.mark.integration


def test_valid_job_gets_children_with_the_exact_env(operator: Any, cluster: Any) -> None:
    created = cluster.create_job(job_body())
    sts = cluster.wait_for("the StatefulSet", lambda: cluster.statefulset("tiny"))
    job = parse_job(created)  # the apiserver's defaults applied, as the operator saw it
    expected = render_statefulset(job)
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["env"] == expected["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e["name"] for e in container["env"]] == [
        "PET_NNODES",
        "PET_NPROC_PER_NODE",
        "PET_MASTER_ADDR",
        "PET_MASTER_PORT",
        "PET_RDZV_ENDPOINT",
        "PET_RDZV_ID",
        "SFT_POD_NAME",
        "SFT_CONFIG",
        "SFT_DEVICE",
        "SFT_POD_STATE_DIR",
    ]
    ns = cluster.ns
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PET_MASTER_ADDR"] == f"tiny-0.tiny.{ns}.svc"
    assert env["PET_RDZV_ID"] == created["metadata"]["uid"]
    assert sts["spec"]["replicas"] == 2
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["updateStrategy"] == {"type": "OnDelete"}
    assert sts["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]

    service = cluster.read("Service", "tiny")
    assert service is not None
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["ports"] == render_service(job)["spec"]["ports"]
    config = cluster.read("ConfigMap", "tiny-config")
    assert config is not None and config["data"] == render_configmap(job)["data"]
    assert json.loads(config["data"]["training.json"])["trainingArgs"]["ckpt_output_dir"] == "/checkpoints"
    claim = cluster.read("PersistentVolumeClaim", "tiny-checkpoints")
    assert claim is not None and claim["spec"]["accessModes"] == ["ReadWriteMany"]

    # Pending until every pod runs, then Running; an Event for each phase.
    status = cluster.wait_for("phase Pending", lambda: (s := cluster.status("tiny")).get("phase") == "Pending" and s)
    assert status["totalNodes"] == 2 and status["nodes"] == "0/2"
    cluster.run_all_pods("tiny", 2)
    status = cluster.wait_for("phase Running", lambda: (s := cluster.status("tiny")).get("phase") == "Running" and s)
    assert (status["readyNodes"], status["nodes"], status["observedGeneration"]) == (2, "2/2", 1)
    assert status["startTime"]
    ready = cluster.condition("tiny", "Ready")
    assert ready is not None and ready["status"] == "True" and ready["reason"] == "AllNodesRunning"
    reasons = cluster.wait_for(
        "Pending and Running events",
        lambda: (r := {e["reason"] for e in cluster.events("tiny")}) >= {"Pending", "Running"} and r,
    )
    assert "Failed" not in reasons
    # kopf's bookkeeping uses our group's prefix, and the operator never wrote spec.
    job_now = cluster.job("tiny")
    assert all(not k.startswith("kopf.zalando.org") for k in job_now["metadata"].get("annotations", {}))
    assert job_now["spec"] == created["spec"]
    assert job_now["metadata"]["generation"] == 1


def test_crd_applies_and_examples_are_accepted(crd: str, cluster: Any) -> None:
    import pathlib

    import yaml

    root = pathlib.Path(__file__).resolve().parents[2]
    for example in sorted((root / "examples").glob("*.yaml")):
        body = yaml.safe_load(example.read_text())
        body["metadata"].pop("namespace", None)
        accepted = cluster.custom.create_namespaced_custom_object(
            "finetune.dev", "v1alpha1", cluster.ns, "sftjobs", body, dry_run="All"
        )
        # The apiserver filled the schema's defaults; the operator's models read it back as is.
        assert accepted["spec"]["pod"]["imagePullPolicy"] in ("IfNotPresent", "Always", "Never")
        assert parse_job(accepted).spec.to_api() == accepted["spec"]


def test_printer_columns(operator: Any, cluster: Any, control_plane: Any) -> None:
    import ssl
    import urllib.request

    cluster.create_job(job_body())
    cluster.wait_for("a status", lambda: cluster.status("tiny").get("nodes"))
    request = urllib.request.Request(
        f"{control_plane.server}/apis/finetune.dev/v1alpha1/namespaces/{cluster.ns}/sftjobs",
        headers={
            "Authorization": f"Bearer {control_plane.admin_token}",
            "Accept": "application/json;as=Table;g=meta.k8s.io;v=v1",  # what `kubectl get` asks for
        },
    )
    context = ssl.create_default_context(cafile=str(control_plane.ca_file))
    with urllib.request.urlopen(request, context=context) as response:
        table = json.loads(response.read())
    assert [c["name"] for c in table["columnDefinitions"]] == [
        "Name",
        "Phase",
        "Nodes",
        "Epoch",
        "Progress",
        "Loss",
        "Latest checkpoint",
        "Age",
    ]
    assert table["rows"][0]["cells"][:3] == ["tiny", "Pending", "0/2"]


def test_all_namespaces_mode(operator_as: Any, control_plane: Any, cluster: Any) -> None:
    """`sft-operator run` without --namespace (the chart's cluster-wide install)."""
    operator_as(control_plane.kubeconfig, [])
    cluster.create_job(job_body("anywhere"))
    cluster.wait_for("the StatefulSet", lambda: cluster.statefulset("anywhere"))
    cluster.wait_for("a status", lambda: cluster.status("anywhere").get("phase") == "Pending")
