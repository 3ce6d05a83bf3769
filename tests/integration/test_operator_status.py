"""Status from the checkpoint volume, completion and failure, on the real control plane.

No kubelet and no reporter sidecar run here: the tests do what they would, through the API. Pod
status is patched as a kubelet reports it; the progress ConfigMap is patched with the job's own
ServiceAccount token, exactly as the reporter in pod 0 does (so its RBAC is exercised too).
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
from typing import Any

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException
from sftjobs import job_body

from devtools.controlplane import request_service_account_token
from sft_core import contract
from sft_core.progress import CheckpointInfo, FullStateInfo, Stage, TrainingProgress

pytestmark = pytest.mark.integration
SETTLE_S = 3.0  # long enough for the operator to have acted on every event so far
T0, T1, T2 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z", "2026-01-01T00:10:00Z"
PROGRESS_KEY = contract.PROGRESS_KEY


def summary(stage: Stage, samples: int, checkpoints: list[str], loss: str = "0.4321") -> TrainingProgress:
    """What the reporter publishes (see progress.summarize_progress) for a 2-epoch, 100-sample run."""
    total = 200
    completed = stage is Stage.COMPLETED
    percent = 100 if completed else min(99, 100 * samples // total)
    epoch = 2 if completed else samples // 100 + 1
    return TrainingProgress(
        stage=stage,
        epoch=epoch,
        num_epochs=2,
        epoch_display=f"{epoch}/2",
        samples_seen=samples,
        total_samples=total,
        percent=percent,
        percent_display=f"{percent}%",
        last_loss=loss,
        throughput="12.50",
        eta_seconds=0 if completed else int((total - samples) / 12.5),
        checkpoints=[
            CheckpointInfo(name=c, path=f"hf_format/{c}", samples=int(c.split("_")[1]), epoch=1, time=T1)
            for c in checkpoints
        ],
        latest_checkpoint=checkpoints[-1] if checkpoints else None,
        latest_full_state=FullStateInfo(name="epoch_0", path="full_state/epoch_0", epoch=1, samples=100, time=T1)
        if samples >= 100
        else None,
        resumable=samples >= 100,
        last_update_time=T2,
    )


class Reporter:
    """The reporter sidecar's API identity: the pods' ServiceAccount (<job>), via TokenRequest."""

    def __init__(self, control_plane: Any, api_client: Any, namespace: str, job: str):
        self.ns, self.job = namespace, job
        token = request_service_account_token(api_client, namespace, job)
        self.user = f"system:serviceaccount:{namespace}:{job}"
        self.client = control_plane.api_client(token)
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.custom = kubernetes.client.CustomObjectsApi(self.client)

    def publish(self, progress: TrainingProgress) -> None:
        """Reporter.Publisher.publish's exact call."""
        body = {"data": {PROGRESS_KEY: json.dumps(progress.to_api(), sort_keys=True)}}
        self.core.patch_namespaced_config_map(f"{self.job}-progress", self.ns, body)

    def close(self) -> None:
        self.client.close()


def forbidden(call: Any) -> bool:
    try:
        call()
    except ApiException as exc:
        if exc.status == 403:
            return True
        raise
    return False


def started_job(control_plane: Any, cluster: Any, name: str, nnodes: int = 2, **spec: Any) -> Reporter:
    """A job whose pods run and whose reporter identity exists."""
    cluster.create_job(job_body(name, nnodes=nnodes, **spec))
    cluster.wait_for("the StatefulSet", lambda: cluster.statefulset(name))
    cluster.wait_for("the progress ConfigMap", lambda: cluster.read("ConfigMap", f"{name}-progress"))
    rbac = kubernetes.client.RbacAuthorizationV1Api(cluster.client)
    cluster.wait_for(
        "the reporter's RoleBinding",
        lambda: _exists(lambda: rbac.read_namespaced_role_binding(f"{name}-reporter", cluster.ns)),
    )
    cluster.run_all_pods(name, nnodes)
    cluster.wait_for("Running", lambda: cluster.status(name).get("phase") == "Running")
    return Reporter(control_plane, cluster.client, cluster.ns, name)


def _exists(read: Any) -> bool:
    try:
        read()
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def table(control_plane: Any, namespace: str) -> dict[str, dict[str, Any]]:
    """`kubectl get sftjobs` as the API server answers it (the Table API, our printer columns):
    {job name: {column name: cell}}."""
    path = f"/apis/{contract.GROUP}/{contract.VERSION}/namespaces/{namespace}/{contract.PLURAL}"
    request = urllib.request.Request(
        control_plane.server + path,
        headers={
            "Authorization": f"Bearer {control_plane.admin_token}",
            "Accept": "application/json;as=Table;v=v1;g=meta.k8s.io",
        },
    )
    context = ssl.create_default_context(cafile=str(control_plane.ca_file))
    with urllib.request.urlopen(request, context=context, timeout=10) as resp:
        answer = json.loads(resp.read())
    assert answer["kind"] == "Table", answer
    names = [column["name"] for column in answer["columnDefinitions"]]
    return {row["object"]["metadata"]["name"]: dict(zip(names, row["cells"])) for row in answer["rows"]}


def set_trainer(cluster: Any, pod: str, restarts: int, last: dict[str, Any] | None, running: bool = True) -> None:
    """What a kubelet reports for the pod's containers: the trainer with its restarts and how it
    last ended, the reporter sidecar running."""

    def status(name: str, count: int, last_state: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "name": name,
            "image": "img",
            "imageID": "",
            "ready": running,
            "started": running,
            "restartCount": count,
            "state": {"running": {"startedAt": T2}} if running else {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": last_state} if last_state else {},
        }

    cluster.core.patch_namespaced_pod_status(
        pod,
        cluster.ns,
        {
            "status": {
                "phase": "Running",
                "containerStatuses": [status(contract.TRAINER_CONTAINER, restarts, last), status("reporter", 0, None)],
            }
        },
    )


def test_progress_summary_appears_in_status_and_printer_columns(
    control_plane: Any, operator: Any, cluster: Any
) -> None:
    reporter = started_job(control_plane, cluster, "tiny")
    try:
        assert cluster.read("ConfigMap", "tiny-progress").get("data") in (None, {})
        row = table(control_plane, cluster.ns)["tiny"]
        assert {k: v for k, v in row.items() if k != "Age"} == {
            "Name": "tiny",
            "Phase": "Running",
            "Nodes": "2/2",
            "Epoch": None,
            "Progress": None,
            "Loss": None,
            "Latest checkpoint": None,
        }
        # A minimal summary (an older or newer reporter may leave fields out): still a status.
        reporter.core.patch_namespaced_config_map(
            "tiny-progress", cluster.ns, {"data": {PROGRESS_KEY: '{"stage": "Initializing"}'}}
        )
        cluster.wait_for(
            "the minimal progress",
            lambda: (
                cluster.status("tiny").get("progress")
                == {
                    "stage": "Initializing",
                    "epoch": 0,
                    "numEpochs": 0,
                    "samplesSeen": 0,
                    "percent": 0,
                    "checkpoints": [],
                    "resumable": False,
                }
            ),
        )
        first = summary(Stage.TRAINING, 40, ["samples_40"])
        reporter.publish(first)
        cluster.wait_for("status.progress", lambda: cluster.status("tiny").get("progress") == first.to_api())
        row = table(control_plane, cluster.ns)["tiny"]
        assert {k: v for k, v in row.items() if k != "Age"} == {
            "Name": "tiny",
            "Phase": "Running",
            "Nodes": "2/2",
            "Epoch": "1/2",
            "Progress": "20%",
            "Loss": "0.4321",
            "Latest checkpoint": "samples_40",
        }
        second = summary(Stage.TRAINING, 120, ["samples_40", "samples_100"], loss="0.2000")
        reporter.publish(second)
        cluster.wait_for("the newer progress", lambda: cluster.status("tiny").get("progress") == second.to_api())
        row = table(control_plane, cluster.ns)["tiny"]
        assert (row["Epoch"], row["Progress"], row["Loss"], row["Latest checkpoint"]) == (
            "2/2",
            "60%",
            "0.2000",
            "samples_100",
        )
        status = cluster.status("tiny")
        assert status["phase"] == "Running" and status["progress"]["resumable"] is True
        # An unreadable summary is ignored: the last good one stays.
        reporter.core.patch_namespaced_config_map("tiny-progress", cluster.ns, {"data": {PROGRESS_KEY: "{not json"}})
        time.sleep(SETTLE_S)
        assert cluster.status("tiny")["progress"] == second.to_api()
    finally:
        reporter.close()


def test_completed_is_succeeded_scaled_to_zero_for_good(control_plane: Any, operator: Any, cluster: Any) -> None:
    mark = control_plane.audit_position()
    reporter = started_job(control_plane, cluster, "done")
    try:
        final = summary(Stage.COMPLETED, 200, ["samples_100", "samples_200"])
        reporter.publish(final)
        status = cluster.wait_for("Succeeded", lambda: (s := cluster.status("done")).get("phase") == "Succeeded" and s)
        message = "trained 2 epochs; final checkpoint hf_format/samples_200"
        complete = next(c for c in status["conditions"] if c["type"] == "Complete")
        assert (complete["status"], complete["reason"], complete["message"]) == ("True", "TrainingCompleted", message)
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "Finished")
        assert status["completionTime"] and status["progress"] == final.to_api()
        cluster.wait_for("the StatefulSet at 0", lambda: cluster.statefulset("done")["spec"]["replicas"] == 0)
        events = cluster.wait_for(
            "the Succeeded Event", lambda: [e for e in cluster.events("done") if e["reason"] == "Succeeded"]
        )
        assert [(e["type"], e["message"]) for e in events] == [("Normal", message)]
        assert cluster.read("PersistentVolumeClaim", "done-checkpoints") is not None  # checkpoints kept

        # The pods go (the StatefulSet controller deletes them); the status stays.
        cluster.wait_for(
            "no pods",
            lambda: not [p for p in cluster.pods("done") if not p["metadata"].get("deletionTimestamp")],
            timeout_s=60,
        )
        # An operator restart, and a suspend/resume round trip while it was down: never trains again.
        operator.kill()
        cluster.patch_job("done", {"spec": {"suspend": True}})
        operator.start()
        cluster.patch_job("done", {"spec": {"suspend": False}})
        time.sleep(SETTLE_S)
        assert cluster.statefulset("done")["spec"]["replicas"] == 0
        after = cluster.status("done")
        assert after["phase"] == "Succeeded" and after["completionTime"] == status["completionTime"]
        # The spec changes were seen: a GitOps health check (observedGeneration == generation) is done.
        assert (
            after["observedGeneration"] == cluster.job("done")["metadata"]["generation"] > status["observedGeneration"]
        )
        assert after["progress"] == final.to_api()
        assert cluster.pods("done") == [] or all(p["metadata"].get("deletionTimestamp") for p in cluster.pods("done"))
        assert len([e for e in cluster.events("done") if e["reason"] == "Succeeded"]) == 1
        assert "Traceback" not in operator.logs()

        # Only the reporter ever wrote the progress ConfigMap's data: the operator created it
        # empty and, across the restart, left it alone.
        data = json.loads(cluster.read("ConfigMap", "done-progress")["data"][PROGRESS_KEY])
        assert data == final.to_api()
        writes = [
            w
            for w in control_plane.write_requests(since=mark, namespace=cluster.ns)
            if w.resource == "configmaps" and w.name == "done-progress"
        ]
        assert [(w.verb, w.user) for w in writes if w.verb != "create"] == [("patch", reporter.user)], writes
    finally:
        reporter.close()


def test_restarts_past_max_restarts_fail_the_job_with_the_containers_message(
    control_plane: Any, operator: Any, cluster: Any
) -> None:
    reporter = started_job(control_plane, cluster, "crashy", maxRestarts=2)
    reporter.close()
    at = ["2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z", "2026-01-01T00:03:00Z"]
    oom = {
        "exitCode": 137,
        "reason": "OOMKilled",
        "message": "rank 0: CUDA out of memory (tried 2 GiB)",
        "startedAt": T0,
        "finishedAt": at[0],
    }
    set_trainer(cluster, "crashy-0", 1, oom)
    cluster.wait_for("a failure counted", lambda: cluster.status("crashy").get("restarts") == 1)
    # The other rank, ended by the same failure: one failure, not two (the most of any node counts).
    set_trainer(cluster, "crashy-1", 1, {**oom, "exitCode": 1, "reason": "Error", "message": "peer lost"})
    set_trainer(cluster, "crashy-0", 2, {**oom, "finishedAt": at[1]})
    cluster.wait_for("two failures counted", lambda: cluster.status("crashy").get("restarts") == 2)
    time.sleep(SETTLE_S)
    assert (cluster.status("crashy")["phase"], cluster.status("crashy")["restarts"]) == ("Running", 2)  # at the limit
    set_trainer(cluster, "crashy-0", 3, {**oom, "finishedAt": at[2]})
    status = cluster.wait_for("Failed", lambda: (s := cluster.status("crashy")).get("phase") == "Failed" and s)
    message = (
        "the trainer failed 3 times (spec.maxRestarts: 2; preemptions do not count); last: pod crashy-0: "
        "OOMKilled (exit code 137): rank 0: CUDA out of memory (tried 2 GiB)"
    )
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert (failed["status"], failed["reason"], failed["message"]) == ("True", "TooManyRestarts", message)
    assert status["restarts"] == 3 and status["completionTime"]
    assert status["nodeRestarts"] == [
        {"node": 0, "failures": 3, "preemptions": 0, "lastExitCode": 137, "lastExitTime": at[2]},
        {"node": 1, "failures": 1, "preemptions": 0, "lastExitCode": 1, "lastExitTime": at[0]},
    ]
    cluster.wait_for("the StatefulSet at 0", lambda: cluster.statefulset("crashy")["spec"]["replicas"] == 0)
    events = cluster.wait_for(
        "the Failed Event", lambda: [e for e in cluster.events("crashy") if e["reason"] == "Failed"]
    )
    assert [(e["type"], e["message"]) for e in events] == [("Warning", message)]
    assert cluster.read("PersistentVolumeClaim", "crashy-checkpoints") is not None
    # For good: an operator restart keeps it Failed and at 0.
    operator.restart()
    time.sleep(SETTLE_S)
    assert cluster.status("crashy")["phase"] == "Failed"
    assert cluster.statefulset("crashy")["spec"]["replicas"] == 0


def test_exit_code_2_is_config_rejected(control_plane: Any, operator: Any, cluster: Any) -> None:
    started_job(control_plane, cluster, "badcfg", nnodes=1).close()
    rejected = {
        "exitCode": contract.EXIT_BAD_CONFIG,
        "reason": "Error",
        "startedAt": T0,
        "finishedAt": T1,
        "message": "sft-launcher: training.json: max_seq_len must be positive",
    }
    set_trainer(cluster, "badcfg-0", 1, rejected, running=False)
    status = cluster.wait_for("Failed", lambda: (s := cluster.status("badcfg")).get("phase") == "Failed" and s)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "ConfigRejected"
    assert failed["message"].endswith(
        "pod badcfg-0: Error (exit code 2): sft-launcher: training.json: max_seq_len must be positive"
    )
    assert status.get("restarts", 0) == 0  # rejected before training: not a restart
    cluster.wait_for("the StatefulSet at 0", lambda: cluster.statefulset("badcfg")["spec"]["replicas"] == 0)


def test_reporter_may_patch_its_own_progress_configmap_and_nothing_else(
    control_plane: Any, operator: Any, cluster: Any
) -> None:
    reporter = started_job(control_plane, cluster, "mine")
    other = started_job(control_plane, cluster, "theirs", nnodes=1)
    other.close()
    try:
        # The pods run as the job's own ServiceAccount.
        template = cluster.statefulset("mine")["spec"]["template"]["spec"]
        assert template["serviceAccountName"] == "mine"
        reporter.publish(summary(Stage.TRAINING, 10, []))
        assert reporter.core.read_namespaced_config_map("mine-progress", cluster.ns).data[PROGRESS_KEY]
        body = {"data": {PROGRESS_KEY: "{}"}}
        core, custom, ns = reporter.core, reporter.custom, cluster.ns
        refused = {
            "patch another job's progress": lambda: core.patch_namespaced_config_map("theirs-progress", ns, body),
            "read another job's progress": lambda: core.read_namespaced_config_map("theirs-progress", ns),
            "patch its own config": lambda: core.patch_namespaced_config_map("mine-config", ns, body),
            "read its own config": lambda: core.read_namespaced_config_map("mine-config", ns),
            "replace its progress": lambda: core.replace_namespaced_config_map(
                "mine-progress", ns, {"metadata": {"name": "mine-progress"}, "data": {}}
            ),
            "delete its progress": lambda: core.delete_namespaced_config_map("mine-progress", ns),
            "create a ConfigMap": lambda: core.create_namespaced_config_map(ns, {"metadata": {"name": "x"}}),
            "list ConfigMaps": lambda: core.list_namespaced_config_map(ns),
            "patch its SFTJob": lambda: custom.patch_namespaced_custom_object(
                contract.GROUP, contract.VERSION, ns, contract.PLURAL, "mine", {"spec": {"suspend": True}}
            ),
            "patch its SFTJob's status": lambda: custom.patch_namespaced_custom_object_status(
                contract.GROUP, contract.VERSION, ns, contract.PLURAL, "mine", {"status": {"phase": "Succeeded"}}
            ),
            "read its SFTJob": lambda: custom.get_namespaced_custom_object(
                contract.GROUP, contract.VERSION, ns, contract.PLURAL, "mine"
            ),
            "list pods": lambda: core.list_namespaced_pod(ns),
        }
        allowed = [what for what, call in refused.items() if not forbidden(call)]
        assert allowed == []
        assert cluster.status("mine")["phase"] == "Running"
    finally:
        reporter.close()


def test_preemptions_are_counted_apart_and_never_fail_the_job(control_plane: Any, operator: Any, cluster: Any) -> None:
    """Four drains of a job allowed no failure at all: each time the trainer saved an on-demand
    checkpoint and exited 3. Still Running, 4 preemptions, 0 restarts."""
    reporter = started_job(control_plane, cluster, "spot", maxRestarts=0)
    reporter.close()
    for drain in range(1, 5):
        at = f"2026-01-01T00:0{drain}:00Z"
        saved = {
            "exitCode": 3,
            "reason": "Error",
            "message": "preempted: saved full_state/epoch_1; a restart resumes",
            "startedAt": T0,
            "finishedAt": at,
        }
        set_trainer(cluster, "spot-0", drain, saved)
        set_trainer(cluster, "spot-1", drain, saved)
        cluster.wait_for(
            f"preemption {drain} counted", lambda drain=drain: cluster.status("spot").get("preemptions") == drain
        )
    time.sleep(SETTLE_S)
    status = cluster.status("spot")
    assert (status["phase"], status["restarts"], status["preemptions"]) == ("Running", 0, 4)
    assert cluster.statefulset("spot")["spec"]["replicas"] == 2
    # One crash is one too many for maxRestarts 0: it is told apart from the preemptions.
    crash = {
        "exitCode": 1,
        "reason": "Error",
        "message": "training failed: boom",
        "startedAt": T0,
        "finishedAt": "2026-01-01T00:06:00Z",
    }
    set_trainer(cluster, "spot-0", 5, crash)
    failed = cluster.wait_for("Failed", lambda: (s := cluster.status("spot")).get("phase") == "Failed" and s)
    assert (failed["restarts"], failed["preemptions"]) == (1, 4)


def test_failure_events_with_multi_byte_messages_are_posted(control_plane: Any, operator: Any, cluster: Any) -> None:
    """A Failed message over 1024 bytes (progress-bar characters are 3 bytes) still becomes an
    Event: it is cut to the API server's limit by bytes, not refused."""
    reporter = started_job(control_plane, cluster, "bars", maxRestarts=3)
    reporter.close()
    tail = "Map: 100%|" + "█" * 600 + "| 40/40"
    rejected = {"exitCode": 2, "reason": "Error", "message": tail, "startedAt": T0, "finishedAt": T1}
    set_trainer(cluster, "bars-0", 1, rejected, running=False)
    cluster.wait_for("Failed", lambda: cluster.status("bars").get("phase") == "Failed")
    events = cluster.wait_for(
        "the Failed Event", lambda: [e for e in cluster.events("bars") if e["reason"] == "Failed"]
    )
    message = events[0]["message"]
    assert len(message.encode("utf-8")) <= 1024
    assert message.startswith("the launcher rejected its configuration") and message.endswith("█| 40/40")


def test_a_job_with_a_refused_change_still_finishes_and_scales_to_zero(
    control_plane: Any, operator: Any, cluster: Any
) -> None:
    """numEpochs changed while it ran: refused, and when the run ends the pods are released
    (they stayed 2/2 for good before) and the status still says the change was refused."""
    reporter = started_job(control_plane, cluster, "edited")
    try:
        cluster.patch_job("edited", {"spec": {"numEpochs": 7}})
        cluster.wait_for(
            "the refusal",
            lambda: (c := cluster.condition("edited", "SpecValid")) and c["reason"] == "ImmutableFieldChanged",
        )
        reporter.publish(summary(Stage.COMPLETED, 200, ["samples_100", "samples_200"]))
        cluster.wait_for("Succeeded", lambda: cluster.status("edited").get("phase") == "Succeeded")
        cluster.wait_for("the StatefulSet at 0", lambda: cluster.statefulset("edited")["spec"]["replicas"] == 0)
        time.sleep(SETTLE_S)
        status = cluster.status("edited")
        valid = next(c for c in status["conditions"] if c["type"] == "SpecValid")
        assert (valid["status"], valid["reason"]) == ("False", "ImmutableFieldChanged")
        assert valid["message"].startswith(
            "spec.numEpochs: immutable once the job is created: it runs with 2, the spec asks for 7"
        )
        assert status["observedGeneration"] == cluster.job("edited")["metadata"]["generation"]
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert (ready["reason"], ready["message"]) == ("Finished", "training is over; pods scaled to 0")
    finally:
        reporter.close()


def test_checkpoint_at_epoch_off_is_said_once_as_an_event(operator: Any, cluster: Any) -> None:
    """checkpointAtEpoch: false is valid but also stops the epoch-end full states (the resume
    points): the job runs, and one Warning Event says so, naming both fields; a job that turns
    both off on purpose gets none."""
    cluster.create_job(job_body("noepoch", checkpointAtEpoch=False))
    cluster.create_job(job_body("neither", checkpointAtEpoch=False, accelerateFullStateAtEpoch=False))
    cluster.wait_for("both jobs Pending", lambda: all(cluster.status(n).get("phase") for n in ("noepoch", "neither")))
    events = cluster.wait_for(
        "the Event", lambda: [e for e in cluster.events("noepoch") if e["reason"] == "NoEpochFullState"]
    )
    assert events[0]["type"] == "Warning"
    assert events[0]["message"].startswith(
        "spec.checkpointAtEpoch: false also stops the full state saved at each "
        "epoch end (spec.accelerateFullStateAtEpoch has no effect without it)"
    )
    cluster.wait_for(
        "the StatefulSet",
        lambda: (
            cluster.apps.list_namespaced_stateful_set(
                cluster.ns, label_selector=f"{contract.LABEL_JOB_NAME}=noepoch"
            ).items
        ),
    )
    time.sleep(2)  # an Event posted again would show by now
    assert [e["count"] or 1 for e in cluster.events("noepoch") if e["reason"] == "NoEpochFullState"] == [1]
    assert not [e for e in cluster.events("neither") if e["reason"] == "NoEpochFullState"]


# --- untrusted progress and children (issue 22) -----------------------------------------------


def test_garbage_progress_is_dropped_with_one_warning_per_key_and_the_status_moves_on(
    control_plane: Any, operator: Any, cluster: Any
) -> None:
    """The job's own pods write its progress ConfigMap: values the status schema cannot hold
    (a date-time that is none, 2^70, a string for a number, NaN) are dropped, each named once in
    a Warning Event, and the rest still moves: the summary's other values, Succeeded, scale to 0.
    Before, the API server refused every status patch holding them (422) and the job froze."""
    reporter = started_job(control_plane, cluster, "garbage")
    huge = 2**70
    try:

        def garbage(stage: Stage, samples: int) -> str:
            good = summary(stage, samples, ["samples_100"]).to_api()
            return json.dumps(
                {
                    **good,
                    "samplesSeen": huge,
                    "lastUpdateTime": "yesterday",
                    "epoch": str(good["epoch"]),
                    "checkpoints": [
                        *good["checkpoints"],
                        {**good["checkpoints"][0], "name": f"samples_{huge}", "samples": huge},
                    ],
                    "lossHistory": [{"samples": 1, "loss": float("nan")}, {"samples": samples, "loss": 0.5}],
                }
            )

        def publish(raw: str) -> None:
            reporter.core.patch_namespaced_config_map("garbage-progress", cluster.ns, {"data": {PROGRESS_KEY: raw}})

        publish(garbage(Stage.TRAINING, 120))
        progress = cluster.wait_for(
            "the checked progress",
            lambda: (p := cluster.status("garbage").get("progress")) and p.get("stage") == "Training" and p,
        )
        assert (progress["samplesSeen"], progress["epoch"], progress["percent"], progress["lastLoss"]) == (
            0,
            0,
            60,
            "0.4321",
        )
        assert "lastUpdateTime" not in progress
        assert [c["name"] for c in progress["checkpoints"]] == ["samples_100", f"samples_{huge}"]
        assert "samples" not in progress["checkpoints"][1]
        assert progress["lossHistory"] == [{"samples": 1}, {"samples": 120, "loss": 0.5}]
        keys = ["samplesSeen", "epoch", "checkpoints[].samples", "lastUpdateTime", "lossHistory[].loss"]

        def warnings() -> list[str]:
            return [e["message"] for e in cluster.events("garbage") if e["reason"] == "ProgressValueDropped"]

        cluster.wait_for("a Warning per key", lambda: len(warnings()) >= len(keys))
        for key in keys:
            assert (
                len(
                    [
                        m
                        for m in warnings()
                        if f"status.progress.{key.replace('[]', '[1]' if 'checkpoints' in key else '[0]')} " in m
                    ]
                )
                == 1
            ), (key, warnings())
        assert all(e["type"] == "Warning" for e in cluster.events("garbage") if e["reason"] == "ProgressValueDropped")
        assert any(
            f"dropped status.progress.samplesSeen = {huge}: Input should be less than or equal to 9007199254740991" in m
            for m in warnings()
        )

        publish(garbage(Stage.TRAINING, 160))  # the same garbage again, with news: no new Warning
        cluster.wait_for(
            "the newer loss point",
            lambda: cluster.status("garbage")["progress"]["lossHistory"][-1] == {"samples": 160, "loss": 0.5},
        )
        publish(garbage(Stage.COMPLETED, 200))
        status = cluster.wait_for(
            "Succeeded", lambda: (s := cluster.status("garbage")).get("phase") == "Succeeded" and s
        )
        complete = next(c for c in status["conditions"] if c["type"] == "Complete")
        assert (complete["status"], complete["reason"]) == ("True", "TrainingCompleted")
        cluster.wait_for("the StatefulSet at 0", lambda: cluster.statefulset("garbage")["spec"]["replicas"] == 0)
        time.sleep(SETTLE_S)
        assert len(warnings()) == len(keys), warnings()
        assert "Traceback" not in operator.logs() and " 422" not in operator.logs()
    finally:
        reporter.close()


def test_children_are_the_jobs_by_owner_reference_not_by_label(control_plane: Any, operator: Any, cluster: Any) -> None:
    """Another workload of the namespace labels a pod like the job's pod 0, its trainer failed,
    and a ConfigMap like the job's progress, saying Completed: neither fails nor finishes the job
    (maxRestarts 0), and the operator deletes neither."""
    started_job(control_plane, cluster, "owned", maxRestarts=0).close()
    labels = cluster.statefulset("owned")["spec"]["template"]["metadata"]["labels"]
    cluster.core.create_namespaced_pod(
        cluster.ns,
        {
            "metadata": {"name": "impostor-0", "labels": labels},
            "spec": {"containers": [{"name": contract.TRAINER_CONTAINER, "image": "img"}]},
        },
    )
    crash = {"exitCode": 1, "reason": "Error", "message": "forged", "startedAt": T0, "finishedAt": T1}
    set_trainer(cluster, "impostor-0", 1, crash, running=False)
    progress_labels = cluster.read("ConfigMap", "owned-progress")["metadata"]["labels"]
    cluster.core.create_namespaced_config_map(
        cluster.ns,
        {
            "metadata": {"name": "owned-progress-forged", "labels": progress_labels},
            "data": {PROGRESS_KEY: json.dumps(summary(Stage.COMPLETED, 200, ["samples_200"]).to_api())},
        },
    )
    time.sleep(SETTLE_S)
    status = cluster.status("owned")
    assert (status["phase"], status.get("restarts", 0), status.get("nodeRestarts", [])) == ("Running", 0, [])
    assert "progress" not in status
    pod = cluster.core.read_namespaced_pod("impostor-0", cluster.ns)
    assert pod.metadata.deletion_timestamp is None
    # The job's own pod failing still counts.
    set_trainer(cluster, "owned-0", 1, {**crash, "message": "real"})
    failed = cluster.wait_for(
        "Failed", lambda: (c := cluster.condition("owned", "Failed")) and c["status"] == "True" and c
    )
    assert failed["reason"] == "TooManyRestarts" and failed["message"].endswith(
        "pod owned-0: Error (exit code 1): real"
    )
