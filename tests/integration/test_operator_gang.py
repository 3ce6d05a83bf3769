"""Gang scheduling (spec.scheduling.gang) on the real API server: the PodGroup of each provider
is created through the provider's CRD (minimal schemas written from the upstream API
definitions, tests/integration/podgroup-crds/), owned by the job, before the StatefulSet whose
pods name it; without the CRD the job gets a clear status problem instead of retries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from operator_logs import refusals
from sftjobs import job_body

from devtools.controlplane import service_account_kubeconfig

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CRDS = Path(__file__).with_name("podgroup-crds")
COSCHEDULING_CRD = "podgroups.scheduling.x-k8s.io"
VOLCANO_CRD = "podgroups.scheduling.volcano.sh"


def _crd_exists(ext: Any, name: str) -> bool:
    try:
        ext.read_custom_resource_definition(name)
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def _install(ext: Any, cluster: Any, name: str) -> None:
    if not _crd_exists(ext, name):
        ext.create_custom_resource_definition(yaml.safe_load((CRDS / f"{name}.yaml").read_text()))

    def established() -> bool:
        conditions = ext.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    cluster.wait_for(f"CRD {name} established", established, timeout_s=30)


def _uninstall(ext: Any, cluster: Any, name: str) -> None:
    if _crd_exists(ext, name):
        ext.delete_custom_resource_definition(name)
    cluster.wait_for(f"CRD {name} gone", lambda: not _crd_exists(ext, name), timeout_s=60, interval_s=0.5)


@pytest.fixture
def podgroup_crds(api_client: Any, cluster: Any) -> Iterator[None]:
    """Both PodGroup CRDs installed for the test, removed after it (CRDs are cluster-wide)."""
    ext = kubernetes.client.ApiextensionsV1Api(api_client)
    for name in (COSCHEDULING_CRD, VOLCANO_CRD):
        _install(ext, cluster, name)
    yield
    for name in (COSCHEDULING_CRD, VOLCANO_CRD):
        _uninstall(ext, cluster, name)


@pytest.fixture
def no_coscheduling_crd(api_client: Any, cluster: Any) -> None:
    _uninstall(kubernetes.client.ApiextensionsV1Api(api_client), cluster, COSCHEDULING_CRD)


def podgroup(cluster: Any, api_version: str, name: str) -> dict[str, Any] | None:
    group, version = api_version.split("/")
    try:
        return cluster.custom.get_namespaced_custom_object(group, version, cluster.ns, "podgroups", name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


@pytest.mark.parametrize(
    ("gang", "api_version", "spec", "scheduler"),
    [
        (
            {"provider": "coscheduling", "scheduleTimeoutSeconds": 120},
            "scheduling.x-k8s.io/v1alpha1",
            {"minMember": 2, "scheduleTimeoutSeconds": 120},
            "scheduler-plugins-scheduler",
        ),
        (
            {"provider": "volcano", "queue": "training"},
            "scheduling.volcano.sh/v1beta1",
            {"minMember": 2, "queue": "training"},
            "volcano",
        ),
    ],
    ids=["coscheduling", "volcano"],
)
def test_gang_job_gets_its_podgroup(
    podgroup_crds: None,
    operator: Any,
    cluster: Any,
    gang: dict[str, Any],
    api_version: str,
    spec: dict[str, Any],
    scheduler: str,
) -> None:
    created = cluster.create_job(job_body(scheduling={"gang": gang}))
    group = cluster.wait_for("the PodGroup", lambda: podgroup(cluster, api_version, "tiny"))
    assert group["spec"] == spec
    (owner,) = group["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "SFTJob",
        "tiny",
        created["metadata"]["uid"],
        True,
    )
    assert group["metadata"]["labels"]["finetune.dev/component"] == "gang"

    sts = cluster.wait_for("the StatefulSet", lambda: cluster.statefulset("tiny"))
    template = sts["spec"]["template"]
    assert template["spec"]["schedulerName"] == scheduler
    labels, annotations = template["metadata"]["labels"], template["metadata"].get("annotations") or {}
    if gang["provider"] == "coscheduling":
        assert labels["scheduling.x-k8s.io/pod-group"] == "tiny"
        assert "scheduling.k8s.io/group-name" not in annotations
    else:
        assert annotations["scheduling.k8s.io/group-name"] == "tiny"
        assert "scheduling.x-k8s.io/pod-group" not in labels
    # The StatefulSet controller's pods carry them (no scheduler of either kind runs here).
    pods = cluster.wait_for("2 pods", lambda: (p := cluster.pods("tiny")) and len(p) == 2 and p)
    for pod in pods:
        assert pod["spec"]["schedulerName"] == scheduler
        if gang["provider"] == "coscheduling":
            assert pod["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "tiny"
        else:
            assert pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "tiny"
    valid = cluster.wait_for("SpecValid", lambda: cluster.condition("tiny", "SpecValid"))
    assert valid["status"] == "True"

    # Immutable: a change is refused by name, the PodGroup stays as created.
    cluster.patch_job("tiny", {"spec": {"scheduling": None}})
    refused = cluster.wait_for(
        "the refusal", lambda: (c := cluster.condition("tiny", "SpecValid")) and c["status"] == "False" and c
    )
    assert refused["reason"] == "ImmutableFieldChanged"
    assert refused["message"].startswith("spec.scheduling.gang: immutable once the job is created")
    assert podgroup(cluster, api_version, "tiny")["spec"] == spec  # type: ignore[index]  # created above


def test_gang_job_without_the_podgroup_crd_says_so(no_coscheduling_crd: None, operator: Any, cluster: Any) -> None:
    cluster.create_job(job_body(scheduling={"gang": {"provider": "coscheduling"}}))
    valid = cluster.wait_for(
        "SpecValid False", lambda: (c := cluster.condition("tiny", "SpecValid")) and c["status"] == "False" and c
    )
    assert valid["reason"] == "InvalidSpec"
    assert valid["message"] == (
        "spec.scheduling.gang: the cluster has no PodGroup API scheduling.x-k8s.io/v1alpha1 (CRD "
        "podgroups.scheduling.x-k8s.io is not installed): install the scheduler-plugins coscheduling plugin, "
        "or remove spec.scheduling.gang"
    )
    assert cluster.status("tiny")["phase"] == "Failed"
    assert cluster.statefulset("tiny") is None  # no pods without their gang
    # Reported once, not retried in a loop: the operator logs no tracebacks for it.
    assert "Traceback" not in operator.logs()


def test_documented_permissions_cover_podgroups(
    podgroup_crds: None, operator_as: Any, control_plane: Any, api_client: Any, cluster: Any, tmp_path: Path
) -> None:
    """The operator as a ServiceAccount holding exactly docs/rbac.md's rules (a Role in the
    namespace) creates both PodGroups, and adopts (updates) one left behind without an owner."""
    import re

    text = (ROOT / "docs" / "rbac.md").read_text()
    block = re.search(r"As a ClusterRole:\s*```yaml\n(.*?)```", text, re.S)
    assert block is not None
    rbac = kubernetes.client.RbacAuthorizationV1Api(api_client)
    cluster.core.create_namespaced_service_account(cluster.ns, {"metadata": {"name": "sft-operator"}})
    rbac.create_namespaced_role(
        cluster.ns, {"metadata": {"name": "op"}, "rules": yaml.safe_load(block.group(1))["rules"]}
    )
    rbac.create_namespaced_role_binding(
        cluster.ns,
        {
            "metadata": {"name": "op"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "op"},
            "subjects": [{"kind": "ServiceAccount", "name": "sft-operator", "namespace": cluster.ns}],
        },
    )
    kubeconfig = service_account_kubeconfig(control_plane, cluster.ns, "sft-operator", tmp_path / "op.kubeconfig")
    # Left behind by an earlier job of the same name (no owner now), with another minMember.
    cluster.custom.create_namespaced_custom_object(
        "scheduling.volcano.sh",
        "v1beta1",
        cluster.ns,
        "podgroups",
        {
            "apiVersion": "scheduling.volcano.sh/v1beta1",
            "kind": "PodGroup",
            "metadata": {
                "name": "vc",
                "labels": {"finetune.dev/job-name": "vc", "app.kubernetes.io/managed-by": "sft-operator"},
            },
            "spec": {"minMember": 5, "queue": "default"},
        },
    )
    op = operator_as(kubeconfig)
    co = cluster.create_job(job_body("co", scheduling={"gang": {"provider": "coscheduling"}}))
    vc = cluster.create_job(job_body("vc", scheduling={"gang": {"provider": "volcano"}}))
    group = cluster.wait_for(
        "the coscheduling PodGroup", lambda: podgroup(cluster, "scheduling.x-k8s.io/v1alpha1", "co")
    )
    assert group["metadata"]["ownerReferences"][0]["uid"] == co["metadata"]["uid"]
    adopted = cluster.wait_for(
        "the Volcano PodGroup adopted",
        lambda: (
            (g := podgroup(cluster, "scheduling.volcano.sh/v1beta1", "vc"))
            and [o["uid"] for o in g["metadata"].get("ownerReferences") or []] == [vc["metadata"]["uid"]]
            and g
        ),
    )
    assert adopted["spec"] == {"minMember": 2, "queue": "default"}  # ours restored, a defaulted field kept
    cluster.wait_for("both StatefulSets", lambda: cluster.statefulset("co") and cluster.statefulset("vc"))
    assert refusals(op.logs()) == []
