"""Queues (spec.scheduling.queueName, or the kueue.x-k8s.io/queue-name label on the SFTJob) on the
real API server: the label lands on the StatefulSet, where Kueue's StatefulSet integration reads
it; suspend still scales to 0 and back; a changed queue is refused and the job stays in its queue.

No Kueue runs here (no webhook, no controller, no LocalQueue): what Kueue does with the label is
not tested (docs/api.md, "Queues (Kueue)")."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sftjobs import job_body

pytestmark = pytest.mark.integration

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


@pytest.fixture(autouse=True)
def fast_policy_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator checks its clock-driven policies every second here (30 s in production)."""
    monkeypatch.setenv("SFT_POLICY_INTERVAL_S", "1")


def _kueue_keys(meta: dict[str, Any]) -> list[str]:
    return sorted(
        k for k in {**(meta.get("labels") or {}), **(meta.get("annotations") or {})} if k.startswith("kueue.")
    )


def test_queue_name_labels_the_statefulset_and_suspend_still_works(operator: Any, cluster: Any) -> None:
    cluster.create_job(job_body("queued", scheduling={"queueName": "team-a"}))
    sts = cluster.wait_for("the StatefulSet", lambda: cluster.statefulset("queued"))
    assert sts["metadata"]["labels"][QUEUE_LABEL] == "team-a"
    # Kueue puts the pod-group labels on the pods itself; the template carries none of Kueue's keys.
    assert _kueue_keys(sts["spec"]["template"]["metadata"]) == []
    cluster.wait_for("2 pods", lambda: len(cluster.pods("queued")) == 2)
    # The status is written after the StatefulSet (whose controller makes the pods): waited for.
    cluster.wait_for("SpecValid", lambda: (c := cluster.condition("queued", "SpecValid")) and c["status"] == "True")

    cluster.patch_job("queued", {"spec": {"suspend": True}})
    cluster.wait_for("scaled to 0", lambda: cluster.statefulset("queued")["spec"]["replicas"] == 0)
    assert cluster.statefulset("queued")["metadata"]["labels"][QUEUE_LABEL] == "team-a"
    cluster.wait_for("Suspended", lambda: cluster.status("queued").get("phase") == "Suspended")
    cluster.patch_job("queued", {"spec": {"suspend": False}})
    cluster.wait_for("back to 2", lambda: cluster.statefulset("queued")["spec"]["replicas"] == 2)
    assert cluster.statefulset("queued")["metadata"]["labels"][QUEUE_LABEL] == "team-a"


def test_queue_label_on_the_sftjob_and_a_refused_move(operator: Any, cluster: Any) -> None:
    body = job_body("labelled")
    body["metadata"]["labels"] = {QUEUE_LABEL: "team-a"}
    cluster.create_job(body)
    sts = cluster.wait_for("the StatefulSet", lambda: cluster.statefulset("labelled"))
    assert sts["metadata"]["labels"][QUEUE_LABEL] == "team-a"
    # Another queue, sent with a suspend: the move is refused (Kueue would refuse to relabel the
    # StatefulSet), the suspend still applies, the StatefulSet stays in team-a.
    cluster.patch_job("labelled", {"metadata": {"labels": {QUEUE_LABEL: "team-b"}}, "spec": {"suspend": True}})
    refused = cluster.wait_for(
        "the refusal", lambda: (c := cluster.condition("labelled", "SpecValid")) and c["status"] == "False" and c
    )
    assert refused["reason"] == "ImmutableFieldChanged"
    assert refused["message"].startswith(
        "spec.scheduling.queueName: immutable once the job is created: it runs with "
        '"team-a", the spec asks for "team-b"'
    ), refused["message"]
    cluster.wait_for("scaled to 0", lambda: cluster.statefulset("labelled")["spec"]["replicas"] == 0)
    assert cluster.statefulset("labelled")["metadata"]["labels"][QUEUE_LABEL] == "team-a"


def test_queue_label_and_field_that_differ_are_an_invalid_spec(operator: Any, cluster: Any) -> None:
    body = job_body("torn", scheduling={"queueName": "team-a"})
    body["metadata"]["labels"] = {QUEUE_LABEL: "team-b"}
    cluster.create_job(body)
    failed = cluster.wait_for(
        "Failed", lambda: (c := cluster.condition("torn", "Failed")) and c["status"] == "True" and c
    )
    assert failed["reason"] == "InvalidSpec"
    assert failed["message"] == (
        "spec.scheduling.queueName: 'team-a' differs from the kueue.x-k8s.io/queue-name "
        "label on the SFTJob ('team-b'): set one of them, or the same queue in both"
    )
    assert cluster.statefulset("torn") is None


def test_pods_held_by_a_queues_gates_are_not_timed_out(operator: Any, cluster: Any) -> None:
    """What Kueue does to a queued StatefulSet's pods, simulated: a scheduling gate (PodScheduled
    False, SchedulingGated) until admission. The start-up timeout waits, then counts from the lift."""
    cluster.create_job(job_body("waits", startupTimeoutSeconds=4, scheduling={"queueName": "team-a"}))
    cluster.wait_for("2 pods", lambda: len(cluster.pods("waits")) == 2)
    gate = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "SchedulingGated",
        "message": "Scheduling is blocked due to non-empty scheduling gates",
    }
    for pod in ("waits-0", "waits-1"):
        cluster.core.patch_namespaced_pod_status(
            pod, cluster.ns, {"status": {"phase": "Pending", "conditions": [gate]}}
        )
    queued = cluster.wait_for(
        "Queued", lambda: (c := cluster.condition("waits", "Queued")) and c["status"] == "True" and c
    )
    assert queued["reason"] == "SchedulingGated"
    assert queued["message"].endswith(
        "pod waits-0: SchedulingGated: Scheduling is blocked due to non-empty scheduling gates"
    )
    time.sleep(8)  # twice the start-up timeout, in the queue
    assert cluster.status("waits")["phase"] == "Pending"
    lifted = {"type": "PodScheduled", "status": "True", "reason": None, "message": None}
    for pod in ("waits-0", "waits-1"):
        cluster.core.patch_namespaced_pod_status(pod, cluster.ns, {"status": {"conditions": [lifted]}})
    lift = time.monotonic()
    cluster.wait_for("Queued False", lambda: (c := cluster.condition("waits", "Queued")) and c["status"] == "False")
    failed = cluster.wait_for(
        "StartupTimeout after the lift",
        lambda: (c := cluster.condition("waits", "Failed")) and c["status"] == "True" and c,
        timeout_s=30,
    )
    assert failed["reason"] == "StartupTimeout"
    assert 3 <= time.monotonic() - lift <= 15  # counted from the lift, not from the job's creation
