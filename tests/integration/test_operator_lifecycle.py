"""The issue's "Done when" list on the real control plane: invalid input, deletion, operator
restarts, re-apply, suspend/resume, immutable fields, a deleted StatefulSet."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from sftjobs import job_body

pytestmark = pytest.mark.integration
SETTLE_S = 3.0  # long enough for the operator to have acted on every event so far


def phase_is(cluster: Any, name: str, phase: str, timeout_s: float = 30.0) -> dict[str, Any]:
    return cluster.wait_for(
        f"{name} phase {phase}", lambda: (s := cluster.status(name)).get("phase") == phase and s, timeout_s
    )


def running_job(cluster: Any, name: str = "tiny", **spec: Any) -> dict[str, Any]:
    cluster.create_job(job_body(name, **spec))
    cluster.wait_for("the StatefulSet", lambda: cluster.statefulset(name))
    cluster.run_all_pods(name, spec.get("nnodes", 2))
    phase_is(cluster, name, "Running")
    return cluster.job(name)


def versions(cluster: Any, name: str = "tiny") -> dict[str, tuple[str, str]]:
    """uid and resourceVersion of the job and each child: equal means nothing was written."""
    out = {}
    for kind, child in [
        ("SFTJob", None),
        ("StatefulSet", name),
        ("Service", name),
        ("NetworkPolicy", name),
        ("ConfigMap", f"{name}-config"),
        ("PersistentVolumeClaim", f"{name}-checkpoints"),
    ]:
        obj = cluster.job(name) if kind == "SFTJob" else cluster.read(kind, child)
        out[kind] = (obj["metadata"]["uid"], obj["metadata"]["resourceVersion"])
    return out


INVALID_FOR_THE_APISERVER = [
    ({"numEpochs": 0}, "spec.numEpochs"),
    ({"device": "tpu"}, "spec.device"),
    ({"learningRate": "fast"}, "spec.learningRate"),
    ({"checkpoints": {"claim": {"size": "lots"}}}, "spec.checkpoints.claim.size"),
]


@pytest.mark.parametrize(("spec", "field"), INVALID_FOR_THE_APISERVER)
def test_apiserver_rejects_schema_violations_naming_the_field(
    crd: str, cluster: Any, spec: dict[str, Any], field: str
) -> None:
    with pytest.raises(ApiException) as info:
        cluster.create_job(job_body(**spec))
    assert info.value.status == 422
    assert field in info.value.body


@pytest.mark.parametrize("name", ["n" * 53, "dotted.name"])
def test_apiserver_rejects_job_names_that_cannot_name_the_children(crd: str, cluster: Any, name: str) -> None:
    with pytest.raises(ApiException) as info:
        cluster.create_job(job_body(name))
    assert info.value.status == 422 and "metadata.name" in info.value.body


def test_missing_required_field_is_rejected(crd: str, cluster: Any) -> None:
    body = job_body()
    del body["spec"]["modelPath"]
    with pytest.raises(ApiException) as info:
        cluster.create_job(body)
    assert info.value.status == 422 and "spec.modelPath" in info.value.body


# Rules that are CEL in the CRD: the 1.20 apiserver cannot run them, so the operator must.
INVALID_FOR_THE_OPERATOR = [
    ("bad-extra", {"extraArgs": {"foo_bar": 1}}, "spec.extraArgs.foo_bar: unknown instructlab-training argument"),
    ("bad-validation", {"validationSplit": 0.1}, "spec.validationFrequency: required when spec.validationSplit > 0"),
    (
        "bad-claims",
        {"checkpoints": {"existingClaim": "a", "claim": {"size": "1Gi"}}},
        "spec.checkpoints: set exactly one",
    ),
    ("bad-env", {"pod": {"env": [{"name": "PET_NNODES", "value": "7"}]}}, "spec.pod.env[0].name: PET_NNODES"),
    ("bad-batch", {"nnodes": 4, "nprocPerNode": 2}, "spec.effectiveBatchSize: must be at least"),
]


def test_invalid_specs_are_failed_with_the_field_named_and_get_no_children(operator: Any, cluster: Any) -> None:
    for name, spec, _ in INVALID_FOR_THE_OPERATOR:
        cluster.create_job(job_body(name, **spec))
    for name, _, message in INVALID_FOR_THE_OPERATOR:
        status = phase_is(cluster, name, "Failed")
        valid = next(c for c in status["conditions"] if c["type"] == "SpecValid")
        assert (valid["status"], valid["reason"]) == ("False", "InvalidSpec")
        assert message in valid["message"], valid["message"]
        for reason in ("Failed", "InvalidSpec"):
            events = cluster.wait_for(
                f"a {reason} event for {name}",
                lambda name=name, reason=reason: [e for e in cluster.events(name) if e["reason"] == reason],
            )
            assert events[0]["type"] == "Warning" and message in events[0]["message"]
    time.sleep(SETTLE_S)
    for name, _, _ in INVALID_FOR_THE_OPERATOR:
        for kind, child in [
            ("StatefulSet", name),
            ("Service", name),
            ("ConfigMap", f"{name}-config"),
            ("PersistentVolumeClaim", f"{name}-checkpoints"),
        ]:
            assert cluster.read(kind, child) is None, (kind, child)


def test_fixing_an_invalid_spec_starts_the_job(operator: Any, cluster: Any) -> None:
    cluster.create_job(job_body(extraArgs={"foo_bar": 1}))
    phase_is(cluster, "tiny", "Failed")
    cluster.patch_job("tiny", {"spec": {"extraArgs": None}})
    cluster.wait_for("the StatefulSet", lambda: cluster.statefulset("tiny"))
    status = phase_is(cluster, "tiny", "Pending")
    assert {c["type"]: c["status"] for c in status["conditions"]}["Failed"] == "False"


def test_deletion_collects_children_and_keeps_checkpoints(
    operator: Any, cluster: Any, garbage_collection: None
) -> None:
    cluster.create_job(job_body("keep"))
    cluster.create_job(job_body("drop", checkpoints={"claim": {"size": "1Gi"}, "deleteWithJob": True}))
    for name in ("keep", "drop"):
        cluster.wait_for(f"{name}'s StatefulSet", lambda name=name: cluster.statefulset(name))
        cluster.run_all_pods(name, 2)
    cluster.delete_job("keep")
    cluster.delete_job("drop")
    for name in ("keep", "drop"):
        for kind, child in [("StatefulSet", name), ("Service", name), ("ConfigMap", f"{name}-config")]:
            cluster.wait_for(
                f"{kind} {child} garbage-collected", lambda kind=kind, child=child: cluster.read(kind, child) is None
            )
    cluster.wait_for(
        "drop's claim deleted (opted in)", lambda: cluster.read("PersistentVolumeClaim", "drop-checkpoints") is None
    )
    time.sleep(SETTLE_S)
    kept = cluster.read("PersistentVolumeClaim", "keep-checkpoints")
    assert kept is not None and kept["metadata"].get("deletionTimestamp") is None
    assert not kept["metadata"].get("ownerReferences")


def test_network_policy_admits_only_the_jobs_pods_and_goes_with_the_job(
    operator: Any, cluster: Any, garbage_collection: None
) -> None:
    """What the API server holds (no NetworkPolicy is enforced here: there is no network plugin)."""
    cluster.create_job(job_body("net"))
    policy = cluster.wait_for("net's NetworkPolicy", lambda: cluster.read("NetworkPolicy", "net"))
    job_labels = {"finetune.dev/job-name": "net", "app.kubernetes.io/managed-by": "sft-operator"}
    assert policy["spec"] == {
        "podSelector": {"matchLabels": job_labels},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": job_labels}}]}],
    }
    owner = cluster.job("net")["metadata"]["uid"]
    assert [(o["kind"], o["name"], o["uid"], o["controller"]) for o in policy["metadata"]["ownerReferences"]] == [
        ("SFTJob", "net", owner, True)
    ]
    pods = cluster.wait_for("net's pods", lambda: (p := cluster.pods("net")) and len(p) == 2 and p)
    assert all(job_labels.items() <= pod["metadata"]["labels"].items() for pod in pods)  # selected by it
    # The reporter's projected token volume reads the CA from here (the controller-manager's
    # root-ca-cert-publisher) and the pods mount no automatic token.
    assert cluster.read("ConfigMap", "kube-root-ca.crt")["data"]["ca.crt"].startswith("-----BEGIN CERTIFICATE-----")
    assert all(pod["spec"]["automountServiceAccountToken"] is False for pod in pods)
    assert not any(
        m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"
        for pod in pods
        for m in pod["spec"]["containers"][0].get("volumeMounts") or []
    )
    cluster.delete_job("net")
    cluster.wait_for("the NetworkPolicy garbage-collected", lambda: cluster.read("NetworkPolicy", "net") is None)


def test_operator_killed_and_restarted_creates_no_duplicates_and_keeps_status(
    operator: Any, cluster: Any, writes: Any
) -> None:
    running_job(cluster)
    time.sleep(SETTLE_S)
    before = versions(cluster)
    operator.kill()
    counted = writes()
    operator.start()
    time.sleep(SETTLE_S)
    assert versions(cluster) == before  # resumed: everything checked, nothing written
    assert operator_writes(counted, writes()) == {}
    cluster.create_job(job_body("while-down"))
    operator.kill()
    cluster.create_job(job_body("created-while-down"))
    operator.start()
    cluster.wait_for("the job created while down", lambda: cluster.statefulset("created-while-down"))
    assert cluster.status("tiny")["phase"] == "Running"
    selector = "finetune.dev/job-name=tiny"
    assert len(cluster.apps.list_namespaced_stateful_set(cluster.ns, label_selector=selector).items) == 1
    assert len(cluster.core.list_namespaced_service(cluster.ns, label_selector=selector).items) == 1
    # Changes made while the operator was down are seen when it comes back.
    operator.kill()
    cluster.set_pod_phase("tiny-1", "Pending")
    operator.start()
    status = phase_is(cluster, "tiny", "Pending")
    assert status["nodes"] == "1/2"


OPERATOR_RESOURCES = ("statefulsets", "services", "networkpolicies", "configmaps", "persistentvolumeclaims", "sftjobs")


def operator_writes(before: Any, after: Any) -> dict[tuple[str, str, str], int]:
    """Writes to the job and its children between two `writes()` snapshots (the controllers'
    StatefulSet status updates excluded: they are not ours)."""
    delta = after - before
    return {k: v for k, v in delta.items() if k[1] in OPERATOR_RESOURCES and k[1:] != ("statefulsets", "status")}


def test_reapplying_the_same_manifest_changes_nothing(operator: Any, cluster: Any, writes: Any) -> None:
    running_job(cluster)
    time.sleep(SETTLE_S)
    before, counted = versions(cluster), writes()
    status = cluster.status("tiny")
    cluster.patch_job("tiny", {"spec": job_body()["spec"]})  # what `kubectl apply` sends again
    time.sleep(SETTLE_S)
    assert versions(cluster) == before  # not the job (no status churn), not a child
    assert operator_writes(counted, writes()) == {("PATCH", "sftjobs", ""): 1}  # only the test's own
    counted = writes()
    cluster.patch_job("tiny", {"metadata": {"labels": {"team": "a"}}})  # metadata only
    time.sleep(SETTLE_S)
    assert operator_writes(counted, writes()) == {("PATCH", "sftjobs", ""): 1}
    after = versions(cluster)
    assert {k: v for k, v in after.items() if k != "SFTJob"} == {k: v for k, v in before.items() if k != "SFTJob"}
    assert cluster.status("tiny") == status
    assert cluster.job("tiny")["metadata"]["generation"] == 1


def test_suspend_scales_to_zero_and_resume_brings_it_back(operator: Any, cluster: Any) -> None:
    running_job(cluster)
    cluster.patch_job("tiny", {"spec": {"suspend": True}})
    status = phase_is(cluster, "tiny", "Suspended")
    assert cluster.statefulset("tiny")["spec"]["replicas"] == 0
    assert {c["type"]: c["status"] for c in status["conditions"]}["Suspended"] == "True"
    # No kubelet: finish the pods' termination as one would.
    for pod in cluster.pods("tiny"):
        cluster.core.delete_namespaced_pod(pod["metadata"]["name"], cluster.ns, grace_period_seconds=0)
    cluster.wait_for("pods gone", lambda: cluster.pods("tiny") == [])
    cluster.patch_job("tiny", {"spec": {"suspend": False}})
    cluster.wait_for("replicas back to 2", lambda: cluster.statefulset("tiny")["spec"]["replicas"] == 2)
    phase_is(cluster, "tiny", "Pending")
    cluster.run_all_pods("tiny", 2)
    phase_is(cluster, "tiny", "Running")
    reasons = [e["reason"] for e in cluster.events("tiny")]
    assert "Suspended" in reasons


REFUSED_EPOCHS = (
    "spec.numEpochs: immutable once the job is created: it runs with 2, the spec asks for 5 "
    "(revert the field, or create a new job)"
)


def refused(cluster: Any, name: str = "tiny") -> dict[str, Any]:
    return cluster.wait_for(
        "SpecValid False", lambda: (c := cluster.condition(name, "SpecValid")) and c["status"] == "False" and c
    )


def test_immutable_change_is_refused_and_the_job_runs_as_created(operator: Any, cluster: Any) -> None:
    """The refusal is in the status (field, what runs, what was asked) for as long as the field
    differs; the suspend sent with it still applies: a pending refusal never pins the pods."""
    running_job(cluster)
    before = versions(cluster)
    cluster.patch_job("tiny", {"spec": {"numEpochs": 5, "suspend": True}})
    valid = refused(cluster)
    assert (valid["reason"], valid["message"]) == ("ImmutableFieldChanged", REFUSED_EPOCHS)
    assert valid["observedGeneration"] == cluster.job("tiny")["metadata"]["generation"]
    cluster.wait_for("suspended", lambda: cluster.statefulset("tiny")["spec"]["replicas"] == 0)
    phase_is(cluster, "tiny", "Suspended")
    time.sleep(SETTLE_S)
    after = versions(cluster)
    assert after["ConfigMap"] == before["ConfigMap"]  # the training config still says 2 epochs
    assert cluster.condition("tiny", "SpecValid")["message"] == REFUSED_EPOCHS  # still refused, still said
    assert any(e["reason"] == "ImmutableFieldChanged" and e["type"] == "Warning" for e in cluster.events("tiny"))
    cluster.patch_job("tiny", {"spec": {"suspend": False}})  # resume while the change is still pending
    cluster.wait_for("resumed", lambda: cluster.statefulset("tiny")["spec"]["replicas"] == 2)
    assert cluster.condition("tiny", "SpecValid")["status"] == "False"
    cluster.patch_job("tiny", {"spec": {"numEpochs": 2}})
    cluster.wait_for("SpecValid True", lambda: (c := cluster.condition("tiny", "SpecValid")) and c["status"] == "True")


def test_mutable_pod_change_updates_the_template_only(operator: Any, cluster: Any) -> None:
    running_job(cluster)
    pods_before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.pods("tiny")}
    cluster.patch_job("tiny", {"spec": {"pod": {"image": "sft-trainer:0.2.0"}}})
    cluster.wait_for(
        "the new image in the template",
        lambda: (
            cluster.statefulset("tiny")["spec"]["template"]["spec"]["containers"][0]["image"] == "sft-trainer:0.2.0"
        ),
    )
    time.sleep(SETTLE_S)
    assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.pods("tiny")} == pods_before  # OnDelete
    assert cluster.status("tiny")["phase"] == "Running"


@pytest.mark.parametrize(
    ("kind", "child"),
    [("StatefulSet", "tiny"), ("Service", "tiny"), ("ConfigMap", "tiny-config"), ("NetworkPolicy", "tiny")],
)
def test_deleted_child_is_recreated(operator: Any, cluster: Any, kind: str, child: str) -> None:
    running_job(cluster)
    old_uid = cluster.read(kind, child)["metadata"]["uid"]
    delete = {
        "StatefulSet": cluster.apps.delete_namespaced_stateful_set,
        # The client cannot parse the Status that deleting a Service returns on 1.20: skip parsing.
        "Service": lambda name, ns: cluster.core.delete_namespaced_service(name, ns, _preload_content=False),
        "ConfigMap": cluster.core.delete_namespaced_config_map,
        "NetworkPolicy": cluster.networking.delete_namespaced_network_policy,
    }[kind]
    delete(child, cluster.ns)
    cluster.wait_for(f"a new {kind}", lambda: (c := cluster.read(kind, child)) and c["metadata"]["uid"] != old_uid)


def test_pod_settings_the_api_refuses_are_reported_as_invalid(operator: Any, cluster: Any) -> None:
    # pod.env entries pass through the CRD unchecked beyond their name; a number where a string
    # belongs is refused when the StatefulSet is written.
    cluster.create_job(job_body(pod={"env": [{"name": "LEVEL", "value": 3}]}))
    status = phase_is(cluster, "tiny", "Failed")
    valid = next(c for c in status["conditions"] if c["type"] == "SpecValid")
    assert valid["reason"] == "InvalidSpec"
    assert valid["message"].startswith("StatefulSet tiny: ") and "env" in valid["message"], valid["message"]
    assert cluster.statefulset("tiny") is None
    cluster.patch_job("tiny", {"spec": {"pod": {"env": [{"name": "LEVEL", "value": "3"}]}}})
    cluster.wait_for("the StatefulSet", lambda: cluster.statefulset("tiny"))
    phase_is(cluster, "tiny", "Pending")


def test_gpu_job_gets_gpu_resources_and_toleration(operator: Any, cluster: Any) -> None:
    """The default device (cuda): no GPU here, so the pods stay Pending, but the manifests are right."""
    body = job_body(nprocPerNode=8, effectiveBatchSize=64)
    del body["spec"]["device"]
    cluster.create_job(body)
    sts = cluster.wait_for("the StatefulSet", lambda: cluster.statefulset("tiny"))
    pod = sts["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": "8"}}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert (env["SFT_DEVICE"], env["PET_NPROC_PER_NODE"]) == ("cuda", "8")
    assert phase_is(cluster, "tiny", "Pending")["totalNodes"] == 2


@pytest.fixture
def examples_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin policy the examples' comments ask for: the 2x8 Llama job names the priority class
    training-high, which the default policy refuses (set before the operator starts)."""
    from sft_operator.policy import ENV_POLICY

    monkeypatch.setenv(ENV_POLICY, '{"allowedPriorityClasses": ["training-high"]}')


def test_examples_get_their_statefulsets(examples_policy: None, operator: Any, cluster: Any) -> None:
    import pathlib

    import yaml

    root = pathlib.Path(__file__).resolve().parents[2]
    names = []
    for example in sorted((root / "examples").glob("sftjob-*.yaml")):
        body = yaml.safe_load(example.read_text())
        body["metadata"].pop("namespace", None)
        cluster.create_job(body)
        names.append(body["metadata"]["name"])
    for name in names:
        cluster.wait_for(f"{name}'s StatefulSet", lambda name=name: cluster.statefulset(name))
        valid = cluster.wait_for(f"{name}'s SpecValid", lambda name=name: cluster.condition(name, "SpecValid"))
        assert valid["status"] == "True", valid


def test_recreated_job_adopts_the_kept_claim_and_foreign_objects_are_not_taken(
    operator: Any, cluster: Any, garbage_collection: None
) -> None:
    first = cluster.create_job(job_body("again"))
    cluster.wait_for("the StatefulSet", lambda: cluster.statefulset("again"))
    claim_uid = cluster.read("PersistentVolumeClaim", "again-checkpoints")["metadata"]["uid"]
    cluster.delete_job("again")
    cluster.wait_for("children collected", lambda: cluster.statefulset("again") is None)
    second = cluster.create_job(job_body("again", checkpoints={"claim": {"size": "1Gi"}, "deleteWithJob": True}))
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    cluster.wait_for("a new StatefulSet", lambda: cluster.statefulset("again"))
    # The same claim (the checkpoints are still there), but not the new job's to delete: the first
    # job created it, so deleteWithJob does not make the new job its owner, and the status says so.
    volume = cluster.wait_for(
        "the CheckpointVolume condition", lambda: (c := cluster.condition("again", "CheckpointVolume")) and c
    )
    assert volume["message"] == (
        f"PersistentVolumeClaim again-checkpoints, created by another SFTJob (uid {first['metadata']['uid']}): kept "
        "when this job is deleted (spec.checkpoints.deleteWithJob applies only to a claim the job created)"
    )
    claim = cluster.read("PersistentVolumeClaim", "again-checkpoints")
    assert claim["metadata"]["uid"] == claim_uid
    assert claim["metadata"]["annotations"]["finetune.dev/created-by-uid"] == first["metadata"]["uid"]
    assert not claim["metadata"].get("ownerReferences")
    from sft_client.api import Deletion, open_job

    assert open_job("again", cluster.ns, api_client=cluster.client).delete() == Deletion(
        "again-checkpoints",
        True,
        "checkpoint claim again-checkpoints is kept (another SFTJob created it: "
        "checkpoints.deleteWithJob applies only to a claim the job created)",
    )
    cluster.wait_for("children collected", lambda: cluster.statefulset("again") is None)
    time.sleep(2)  # the garbage collector acted on the job's children: the claim is not among them
    claim = cluster.read("PersistentVolumeClaim", "again-checkpoints")
    assert claim is not None and claim["metadata"].get("deletionTimestamp") is None

    # Someone else's ConfigMap where the job's would go: refused, not overwritten.
    cluster.core.create_namespaced_config_map(cluster.ns, {"metadata": {"name": "taken-config"}, "data": {"a": "b"}})
    cluster.create_job(job_body("taken"))
    valid = cluster.wait_for(
        "SpecValid False", lambda: (c := cluster.condition("taken", "SpecValid")) and c["status"] == "False" and c
    )
    assert valid["message"] == "ConfigMap taken-config already exists and does not belong to this job"
    assert cluster.read("ConfigMap", "taken-config")["data"] == {"a": "b"}
    assert cluster.statefulset("taken") is None
