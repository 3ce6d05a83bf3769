"""Run policy on the real control plane: start-up timeout, deadline, time to live, whole-group
restart and stall detection. No kubelet here: pod status is patched as a kubelet reports it."""

from __future__ import annotations

import time
from typing import Any

import pytest
from test_operator_status import T0, Stage, started_job, summary

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def fast_policy_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator checks its clock-driven policies every second here (30 s in production)."""
    monkeypatch.setenv("SFT_POLICY_INTERVAL_S", "1")


def now_rfc3339(offset_s: float = 0.0) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + offset_s))


def trainer_status(restarts: int, state: dict[str, Any], last: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    trainer = {
        "name": "trainer",
        "image": "img",
        "imageID": "",
        "ready": "running" in state,
        "restartCount": restarts,
        "state": state,
        "lastState": {"terminated": last} if last else {},
    }
    reporter = {
        "name": "reporter",
        "image": "img",
        "imageID": "",
        "ready": True,
        "restartCount": 0,
        "state": {"running": {"startedAt": T0}},
        "lastState": {},
    }
    return [trainer, reporter]


def failed_message(cluster: Any, name: str, reason: str, timeout_s: float = 30.0) -> str:
    status = cluster.wait_for(
        f"{name} Failed ({reason})", lambda: (s := cluster.status(name)).get("phase") == "Failed" and s, timeout_s
    )
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert (failed["status"], failed["reason"]) == ("True", reason), failed
    return failed["message"]


def test_startup_timeout_fails_with_the_kubelets_reason(control_plane: Any, operator: Any, cluster: Any) -> None:
    cluster.create_job(__import__("sftjobs").job_body("pull", startupTimeoutSeconds=6))
    cluster.wait_for("2 pods", lambda: len(cluster.pods("pull")) == 2)
    cluster.set_pod_phase("pull-0", "Running")
    cluster.core.patch_namespaced_pod_status(
        "pull-1",
        cluster.ns,
        {
            "status": {
                "phase": "Pending",
                "containerStatuses": trainer_status(
                    0, {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "sft:nope"'}}
                ),
            }
        },
    )
    ready = cluster.wait_for(
        "the reason in Ready",
        lambda: (c := cluster.condition("pull", "Ready")) and "waiting for" in (c.get("message") or "") and c,
    )
    assert (
        ready["message"]
        == '1/2 pods running; waiting for pod pull-1: ImagePullBackOff: Back-off pulling image "sft:nope"'
    )
    cluster.wait_for(
        "a Warning Event with the reason",
        lambda: [e for e in cluster.events("pull") if e["reason"] == "ImagePullBackOff"],
    )
    message = failed_message(cluster, "pull", "StartupTimeout")
    assert message == (
        "not every pod ran within spec.startupTimeoutSeconds (6 s): pod pull-1: ImagePullBackOff: "
        'Back-off pulling image "sft:nope"'
    )
    cluster.wait_for("scaled to 0", lambda: cluster.statefulset("pull")["spec"]["replicas"] == 0)


def test_deadline_stops_the_pods_and_keeps_the_checkpoints(control_plane: Any, operator: Any, cluster: Any) -> None:
    started_job(control_plane, cluster, "late", activeDeadlineSeconds=4).close()
    message = failed_message(cluster, "late", "DeadlineExceeded")
    assert "past spec.activeDeadlineSeconds (4 s)" in message and "the checkpoints stay" in message
    cluster.wait_for("scaled to 0 (SIGTERM to the pods)", lambda: cluster.statefulset("late")["spec"]["replicas"] == 0)
    assert cluster.read("PersistentVolumeClaim", "late-checkpoints") is not None


def test_time_to_live_deletes_a_finished_job_and_keeps_its_claim(
    control_plane: Any, operator: Any, cluster: Any, garbage_collection: None
) -> None:
    reporter = started_job(control_plane, cluster, "brief", ttlSecondsAfterFinished=3)
    try:
        reporter.publish(summary(Stage.COMPLETED, 200, ["samples_200"]))
        cluster.wait_for("Succeeded", lambda: cluster.status("brief").get("phase") == "Succeeded")
    finally:
        reporter.close()
    cluster.wait_for("the job deleted", lambda: not _exists(cluster, "brief"), timeout_s=60)
    time.sleep(3)
    assert cluster.read("PersistentVolumeClaim", "brief-checkpoints") is not None  # deleteWithJob: false


def _exists(cluster: Any, name: str) -> bool:
    try:
        cluster.job(name)
    except Exception as exc:  # noqa: BLE001 - a 404 ApiException
        if getattr(exc, "status", None) == 404:
            return False
        raise
    return True


def test_a_failed_rank_restarts_the_ranks_it_left_behind(control_plane: Any, operator: Any, cluster: Any) -> None:
    started_job(control_plane, cluster, "group").close()
    behind_uid = next(p["metadata"]["uid"] for p in cluster.pods("group") if p["metadata"]["name"] == "group-1")
    cluster.core.patch_namespaced_pod_status(
        "group-1",
        cluster.ns,
        {
            "status": {
                "phase": "Running",
                "containerStatuses": trainer_status(0, {"running": {"startedAt": now_rfc3339(-60)}}),
            }
        },
    )
    crash = {
        "exitCode": 1,
        "reason": "Error",
        "message": "training failed: NCCL error",
        "startedAt": now_rfc3339(-60),
        "finishedAt": now_rfc3339(-1),
    }
    started = time.monotonic()
    cluster.core.patch_namespaced_pod_status(
        "group-0",
        cluster.ns,
        {
            "status": {
                "phase": "Running",
                "containerStatuses": trainer_status(1, {"running": {"startedAt": now_rfc3339()}}, last=crash),
            }
        },
    )
    cluster.wait_for(
        "group-1 restarted",
        lambda: all(
            p["metadata"]["uid"] != behind_uid or p["metadata"].get("deletionTimestamp")
            for p in cluster.pods("group")
            if p["metadata"]["name"] == "group-1"
        ),
    )
    noticed_s = time.monotonic() - started
    events = cluster.wait_for(
        "the Event", lambda: [e for e in cluster.events("group") if e["reason"] == "RestartingGroup"]
    )
    assert events[0]["message"] == (
        "pod group-0: Error (exit code 1): training failed: NCCL error; restarting every rank (group-0, group-1)"
    )
    print(f"the rank left behind was restarted {noticed_s:.1f} s after its peer's failure was reported")
    assert cluster.status("group")["restarts"] == 1


def test_a_stalled_job_restarts_every_rank(control_plane: Any, operator: Any, cluster: Any) -> None:
    reporter = started_job(control_plane, cluster, "stuck", stallTimeoutSeconds=60, maxRestarts=3)
    try:
        uids = {p["metadata"]["uid"] for p in cluster.pods("stuck")}
        reporter.publish(summary(Stage.TRAINING, 40, ["samples_40"]))  # its last step long ago
        cluster.wait_for(
            "every rank restarted",
            lambda: all(
                p["metadata"]["uid"] not in uids or p["metadata"].get("deletionTimestamp")
                for p in cluster.pods("stuck")
            ),
            timeout_s=120,
        )
    finally:
        reporter.close()
    status = cluster.wait_for("counted", lambda: (s := cluster.status("stuck")).get("stallRestarts") == 1 and s)
    assert status["restarts"] == 1 and status["phase"] != "Failed"
    # The Event is posted right after the status patch: wait for it.
    events = cluster.wait_for(
        "the Stalled Event", lambda: [e for e in cluster.events("stuck") if e["reason"] == "Stalled"]
    )
    assert events[0]["message"].startswith("no training step for ")
    assert "(spec.stallTimeoutSeconds: 60); last fact on the volume at" in events[0]["message"]


def test_a_second_group_restart_waits_the_backoff(control_plane: Any, operator: Any, cluster: Any) -> None:
    """The first restart of the ranks left behind is at once; the second waits 10 s after its failure
    (restart 2), shown in status.restartBackoff and the Ready message meanwhile."""
    started_job(control_plane, cluster, "backoff").close()

    def fail_rank_0(crashes: int, behind_since_s: float) -> tuple[str, str]:
        """backoff-1's trainer runs since ``behind_since_s`` ago; backoff-0's crashes a ``crashes``-th time now."""
        behind = next(p for p in cluster.pods("backoff") if p["metadata"]["name"] == "backoff-1")
        cluster.core.patch_namespaced_pod_status(
            "backoff-1",
            cluster.ns,
            {
                "status": {
                    "phase": "Running",
                    "containerStatuses": trainer_status(0, {"running": {"startedAt": now_rfc3339(-behind_since_s)}}),
                }
            },
        )
        finished = now_rfc3339()
        crash = {
            "exitCode": 1,
            "reason": "Error",
            "message": f"crash {crashes}",
            "startedAt": now_rfc3339(-30),
            "finishedAt": finished,
        }
        cluster.core.patch_namespaced_pod_status(
            "backoff-0",
            cluster.ns,
            {
                "status": {
                    "phase": "Running",
                    "containerStatuses": trainer_status(crashes, {"running": {"startedAt": finished}}, last=crash),
                }
            },
        )
        return behind["metadata"]["uid"], finished

    def restarted(uid: str) -> bool:
        return all(
            p["metadata"]["uid"] != uid or p["metadata"].get("deletionTimestamp")
            for p in cluster.pods("backoff")
            if p["metadata"]["name"] == "backoff-1"
        )

    uid, _ = fail_rank_0(1, 60)
    cluster.wait_for("the first restart, at once", lambda: restarted(uid), timeout_s=10)
    cluster.wait_for(
        "backoff-1 again",
        lambda: any(
            p["metadata"]["name"] == "backoff-1"
            and p["metadata"]["uid"] != uid
            and not p["metadata"].get("deletionTimestamp")
            for p in cluster.pods("backoff")
        ),
    )
    # The new backoff-1 started after the first failure (times are whole seconds), before the second.
    time.sleep(2.5)
    uid, finished = fail_rank_0(2, 1)
    failed_at = time.time()
    status = cluster.wait_for(
        "the backoff in the status", lambda: (s := cluster.status("backoff")).get("restartBackoff") and s
    )
    backoff = status["restartBackoff"]
    due = time.strftime(
        "%Y-%m-%dT%H:%M:%SZ",
        time.gmtime(time.mktime(time.strptime(finished, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone + 10),
    )
    assert backoff == {
        "reason": "RanksLeftBehind",
        "restart": 2,
        "delaySeconds": 10,
        "nextRestartAt": due,
        "ranks": ["backoff-0", "backoff-1"],
    }, backoff
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (
        f"restarting every rank (backoff-0, backoff-1) after a rank failed at {due}: backoff 10 s before restart 2"
        in ready["message"]
    )
    while time.time() < failed_at + 7:  # held back: not restarted before the backoff is over
        assert not restarted(uid), f"restarted {time.time() - failed_at:.1f} s after the failure"
        time.sleep(0.5)
    cluster.wait_for("the second restart, after the backoff", lambda: restarted(uid), timeout_s=15)
    waited = time.time() - failed_at
    events = cluster.wait_for(
        "the Event",
        lambda: [
            e
            for e in cluster.events("backoff")
            if e["reason"] == "RestartingGroup" and "after a backoff" in e["message"]
        ],
    )
    assert events[0]["message"] == (
        "pod backoff-0: Error (exit code 1): crash 2; restarting every rank (backoff-0, backoff-1) (restart 2, after a backoff of 10 s)"
    )
    print(f"the second restart came {waited:.1f} s after its failure (backoff 10 s, policy clock 1 s)")
    assert 9 <= waited <= 15
    assert "restartBackoff" not in cluster.wait_for(
        "the backoff cleared", lambda: "restartBackoff" not in (s := cluster.status("backoff")) and s
    )
