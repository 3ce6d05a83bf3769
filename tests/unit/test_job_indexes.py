"""The job indexes (indexes.py's projections and Indexes): a job's children are told by owner
reference, not by label; its progress summary arrives checked, and what was dropped is said once
per job and key (publishing.warn_dropped_progress)."""

from __future__ import annotations

import json
from typing import Any

from fake_kube import FakeKube
from kubernetes.client.exceptions import ApiException

from sft_core import contract
from sft_core.progress import TrainingProgress
from sft_models.models import Phase, Reason, parse_job
from sft_operator import render_meta, render_pod
from sft_operator.indexes import Indexes, jobs_by_name, pods_by_job, progress_by_job, statefulsets_by_job
from sft_operator.publishing import PROGRESS_VALUE_DROPPED, JobStatusBook, update_status, warn_dropped_progress
from sft_operator.run_policies import RunPolicy
from sft_operator.status import derive_status

NS, JOB, JOB_UID, STS_UID = "ns", "j", "uid-job", "uid-sts"
KEY = (NS, JOB)
T1, T2 = "2026-01-01T00:05:00Z", "2026-01-01T00:06:00Z"
SPEC = {
    "modelPath": "/m",
    "dataPath": "/d",
    "numEpochs": 1,
    "effectiveBatchSize": 8,
    "learningRate": 1e-5,
    "maxSeqLen": 64,
    "nnodes": 2,
    "checkpoints": {"existingClaim": "c"},
    "maxRestarts": 0,
}
JOB_BODY = {
    "apiVersion": contract.API_VERSION,
    "kind": contract.KIND,
    "metadata": {"namespace": NS, "name": JOB, "uid": JOB_UID},
    "spec": SPEC,
}
LABELS = {contract.LABEL_JOB_NAME: JOB, contract.LABEL_MANAGED_BY: contract.MANAGED_BY}


def owner(kind: str, name: str, uid: str) -> list[dict[str, Any]]:
    return [{"apiVersion": "v1", "kind": kind, "name": name, "uid": uid, "controller": True}]


def statefulset(uid: str = STS_UID, controller: str = JOB_UID, name: str = JOB, replicas: int = 2) -> dict[str, Any]:
    rendered = render_pod.render_statefulset(parse_job(JOB_BODY))
    rendered["metadata"].update(name=name, uid=uid, ownerReferences=owner(contract.KIND, JOB, controller))
    rendered["spec"]["replicas"] = replicas
    return statefulsets_by_job(namespace=NS, labels=LABELS, body=rendered)[KEY]


def pod(name: str, controller: str | None, trainer: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": name, "namespace": NS, "labels": LABELS}
    if controller is not None:
        meta["ownerReferences"] = owner("StatefulSet", JOB, controller)
    status = {
        "phase": "Running",
        "containerStatuses": [{"name": contract.TRAINER_CONTAINER, "restartCount": 1, **trainer}],
    }
    return pods_by_job(namespace=NS, name=name, labels=LABELS, meta=meta, status=status)[KEY]


RUNNING = {"state": {"running": {"startedAt": T1}}}
CRASHED = {
    "state": {"running": {"startedAt": T2}},
    "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": "forged", "finishedAt": T2}},
}


def progress_configmap(summary: Any, name: str = f"{JOB}-progress", controller: str | None = JOB_UID) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": NS,
        "labels": {**LABELS, contract.LABEL_COMPONENT: render_meta.COMPONENT_PROGRESS},
    }
    if controller is not None:
        meta["ownerReferences"] = owner(contract.KIND, JOB, controller)
    raw = summary if isinstance(summary, str) else json.dumps(summary)
    body = {"metadata": meta, "data": {contract.PROGRESS_KEY: raw}}
    return progress_by_job(namespace=NS, labels=meta["labels"], body=body)[KEY]


def indexes(
    *, statefulsets: list[dict[str, Any]], pods: list[dict[str, Any]], progress: list[dict[str, Any]] = ()
) -> Indexes:
    job = jobs_by_name(namespace=NS, name=JOB, body=JOB_BODY)[KEY]
    # kopf's Index: key -> a store of every matching object's value; a dict of lists reads the same.
    return Indexes(
        jobs_by_name={KEY: [job]},
        pods_by_job={KEY: pods},
        statefulsets_by_job={KEY: statefulsets},
        progress_by_job={KEY: list(progress)},
        children_by_job={},
    )


POLICY = RunPolicy(
    nnodes=2,
    max_restarts=0,
    active_deadline_s=None,
    startup_timeout_s=None,
    stall_timeout_s=None,
    ttl_s=None,
    export_uri=None,
)


def status_of(view: Indexes) -> Any:
    return derive_status(
        None,
        generation=1,
        policy=POLICY,
        statefulset=view.statefulset(KEY),
        pods=view.pods(KEY),
        problem=None,
        volume=None,
        now=T2,
        progress=view.progress(KEY),
    ).status


def test_the_pod_projection_records_its_controller() -> None:
    assert pod("j-0", STS_UID, RUNNING)["metadata"] == {"name": "j-0", "deletionTimestamp": None, "controller": STS_UID}
    assert pod("x-0", None, RUNNING)["metadata"]["controller"] is None


def test_a_foreign_pod_labelled_like_pod_0_does_not_fail_the_job() -> None:
    mine = [pod("j-0", STS_UID, RUNNING), pod("j-1", STS_UID, RUNNING)]
    foreign = [
        pod("impostor-0", None, CRASHED),  # labels only
        pod("impostor2-0", "uid-some-other-statefulset", CRASHED),
    ]  # owned, by someone else
    view = indexes(statefulsets=[statefulset()], pods=[*foreign, *mine])
    assert [p["metadata"]["name"] for p in view.pods(KEY)] == ["j-0", "j-1"]
    status = status_of(view)
    assert (status.phase, status.restarts, status.ready_nodes) == (Phase.RUNNING, 0, 2)
    # The same pods matched by label alone (what the indexes did before) fail it: the test can fail.
    by_label = derive_status(
        None,
        generation=1,
        policy=POLICY,
        statefulset=view.statefulset(KEY),
        pods=[*foreign, *mine],
        problem=None,
        volume=None,
        now=T2,
    ).status
    failed = next(c for c in by_label.conditions if c.type == "Failed")
    assert (by_label.phase, failed.reason) == (Phase.FAILED, Reason.TOO_MANY_RESTARTS.value)


def test_the_jobs_statefulset_is_the_one_it_controls() -> None:
    scaled_to_zero = statefulset(uid="uid-forged", controller="uid-another-job", replicas=0)  # same name, other owner
    renamed = statefulset(uid="uid-renamed", name="j-copy", replicas=0)  # owned by the job, not its name
    view = indexes(statefulsets=[scaled_to_zero, renamed, statefulset()], pods=[pod("j-0", STS_UID, RUNNING)])
    assert view.statefulset(KEY)["metadata"]["uid"] == STS_UID
    assert [p["metadata"]["name"] for p in view.pods(KEY)] == ["j-0"]
    only_forged = indexes(statefulsets=[scaled_to_zero], pods=[pod("j-0", "uid-forged", RUNNING)])
    assert only_forged.statefulset(KEY) is None and only_forged.pods(KEY) == []
    assert status_of(only_forged).phase is Phase.PENDING  # not Suspended by a forged StatefulSet at 0
    # A resume still finds a StatefulSet by the job's name (converge compares its owner and adopts).
    assert only_forged.children(KEY).objects[("StatefulSet", JOB)]["metadata"]["uid"] == "uid-forged"


def test_only_the_jobs_own_progress_configmap_counts() -> None:
    completed = {"stage": "Completed", "numEpochs": 1, "epoch": 1, "percent": 100}
    training = {"stage": "Training", "numEpochs": 1, "epoch": 1, "samplesSeen": 4}
    forged = [
        progress_configmap(completed, controller=None),
        progress_configmap(completed, controller="uid-other"),
        progress_configmap(completed, name="j-progress-2"),
    ]
    view = indexes(
        statefulsets=[statefulset()],
        pods=[pod("j-0", STS_UID, RUNNING), pod("j-1", STS_UID, RUNNING)],
        progress=[*forged, progress_configmap(training)],
    )
    assert view.progress(KEY).to_api() == {**training, "percent": 0, "checkpoints": [], "resumable": False}
    assert status_of(view).phase is Phase.RUNNING  # not Succeeded by a forged summary
    assert indexes(statefulsets=[statefulset()], pods=[], progress=forged).progress(KEY) is None


def test_the_progress_projection_checks_the_summary() -> None:
    entry = progress_configmap({"stage": "Training", "samplesSeen": 2**70, "lastUpdateTime": "soon"})
    assert (entry["name"], entry["controller"], entry["progress"]) == (
        f"{JOB}-progress",
        JOB_UID,
        {
            "stage": "Training",
            "epoch": 0,
            "numEpochs": 0,
            "samplesSeen": 0,
            "percent": 0,
            "checkpoints": [],
            "resumable": False,
        },
    )
    assert [d.key for d in entry["dropped"]] == ["samplesSeen", "lastUpdateTime"]
    unreadable = progress_configmap("{not json")
    assert unreadable["progress"] is None and [d.key for d in unreadable["dropped"]] == [""]
    view = indexes(statefulsets=[statefulset()], pods=[], progress=[entry])
    assert [d.key for d in view.progress_dropped(KEY)] == ["samplesSeen", "lastUpdateTime"]


class EventRecorder(FakeKube):
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def post_event(self, job: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


def test_a_dropped_value_is_warned_about_once_per_job_and_key() -> None:
    kube, book = EventRecorder(), JobStatusBook()
    dropped = progress_configmap({"samplesSeen": 2**70, "lastUpdateTime": "soon"})["dropped"]
    for _ in range(3):  # the reporter publishes again and again: the same two keys
        warn_dropped_progress(kube, book, JOB_BODY, dropped)
    where = f"ConfigMap {JOB}-progress ({contract.PROGRESS_KEY})"
    assert kube.events == [
        (
            "Warning",
            PROGRESS_VALUE_DROPPED,
            f"{where}: dropped status.progress.samplesSeen = {2**70}: Input should be "
            "less than or equal to 9007199254740991; the rest of the summary is used",
        ),
        (
            "Warning",
            PROGRESS_VALUE_DROPPED,
            f"{where}: dropped status.progress.lastUpdateTime = 'soon': not a "
            "date-time as the API writes it (YYYY-MM-DDTHH:MM:SSZ, a real date, UTC); the rest of the summary is used",
        ),
    ]
    warn_dropped_progress(kube, book, JOB_BODY, progress_configmap({"samplesSeen": 2**64})["dropped"])
    assert len(kube.events) == 2  # another bad value under a key already named: no new Event
    warn_dropped_progress(kube, book, JOB_BODY, progress_configmap("[]")["dropped"])
    assert kube.events[2] == (
        "Warning",
        PROGRESS_VALUE_DROPPED,
        f"{where}: ignored: status.progress = a list of 0 "
        "items: Input should be a valid dictionary or instance of TrainingProgress; "
        "status.progress keeps the summary last read",
    )
    recreated = {**JOB_BODY, "metadata": {**JOB_BODY["metadata"], "uid": "uid-job-2"}}
    warn_dropped_progress(kube, book, recreated, dropped)
    assert len(kube.events) == 5  # a job created again under the name is told again


class RefusingKube(EventRecorder):
    """The API server refusing any status whose progress says samplesSeen 7 (as it would refuse
    a value outside its schema that the operator's check let through)."""

    def __init__(self) -> None:
        super().__init__()
        self.patches: list[dict[str, Any]] = []

    def patch_job_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        if (patch.get("progress") or {}).get("samplesSeen") == 7:
            raise ApiException(status=422, reason="Unprocessable Entity")
        self.patches.append(patch)


def test_a_status_the_api_server_refuses_for_its_progress_is_written_without_it() -> None:
    """Defence in depth: the phase still moves when the API server refuses the new summary."""
    kube, book = RefusingKube(), JobStatusBook()
    view = indexes(statefulsets=[statefulset()], pods=[pod("j-0", STS_UID, RUNNING), pod("j-1", STS_UID, RUNNING)])
    first = update_status(
        kube, book, JOB_BODY, view.statefulset(KEY), view.pods(KEY), None, None, TrainingProgress(samples_seen=4)
    )
    assert (first.phase, first.progress.samples_seen) == (Phase.RUNNING, 4)
    crashed = [pod("j-0", STS_UID, CRASHED), pod("j-1", STS_UID, RUNNING)]
    second = update_status(
        kube, book, JOB_BODY, view.statefulset(KEY), crashed, None, None, TrainingProgress(samples_seen=7)
    )
    assert (second.phase, second.restarts, second.progress.samples_seen) == (Phase.FAILED, 1, 4)
    assert [(p["phase"], p["progress"]["samplesSeen"]) for p in kube.patches] == [("Running", 4), ("Failed", 4)]
    refused = [e for e in kube.events if e[1] == PROGRESS_VALUE_DROPPED]
    assert [m.split(" (HTTP")[0] for _, _, m in refused] == [
        "the API server refused the status with the new progress summary"
    ]
    update_status(kube, book, JOB_BODY, view.statefulset(KEY), crashed, None, None, TrainingProgress(samples_seen=7))
    assert len([e for e in kube.events if e[1] == PROGRESS_VALUE_DROPPED]) == 1  # said once per job
