"""publishing: what status patch and which Events a derivation produces, against the adapter's
fake answering the two calls publishing makes (patch_job_status, post_event); the book; the
spec's RunPolicy."""

from __future__ import annotations

from typing import Any

import pytest
from fake_kube import FakeKube
from kubernetes.client.exceptions import ApiException
from test_status import T0, pod, progress, sts

from sft_core.untrusted import DroppedValue
from sft_models.models import Reason, RestartBackoff, SFTJobStatus
from sft_operator import publishing
from sft_operator.pod_facts import Blocker
from sft_operator.publishing import JobStatusBook, check_spec, update_status, warn_dropped_progress
from sft_operator.run_policies import RunPolicy
from sft_operator.spec_checks import SpecProblem

SPEC = {
    "modelPath": "/m",
    "dataPath": "/d",
    "numEpochs": 1,
    "effectiveBatchSize": 8,
    "learningRate": 1e-5,
    "maxSeqLen": 64,
    "nnodes": 2,
    "checkpoints": {"existingClaim": "c"},
}
PULL_BACKOFF = 'Back-off pulling image "sft:x"'


class RecordingKube(FakeKube):
    """The adapter's calls publishing makes, recorded (any other fails the test); ``refuse``
    returns the exception a patch raises instead, or None."""

    def __init__(self, refuse: Any = None) -> None:
        self.patches: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []
        self.refuse = refuse or (lambda patch: None)

    def patch_job_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        assert (namespace, name) == ("ns", "j")
        refusal = self.refuse(status)
        if refusal is not None:
            raise refusal
        self.patches.append(status)

    def post_event(self, job: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publishing, "now", lambda: T0)


def job(status: dict[str, Any] | None = None, uid: str = "u", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": "j", "namespace": "ns", "uid": uid, "generation": 1},
        "spec": {**SPEC, **spec},
    }
    if status is not None:
        body["status"] = status
    return body


def waiting(reason: str, message: str = "", ordinal: int = 1) -> dict[str, Any]:
    """A pod whose trainer waits (``reason``: ImagePullBackOff, ...)."""
    state = {"waiting": {"reason": reason, "message": message}}
    return {
        "metadata": {"name": f"j-{ordinal}"},
        "status": {"phase": "Pending", "containerStatuses": [{"name": "trainer", "state": state}]},
    }


def condition(type_: str, status: str, reason: str, message: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"type": type_, "status": status, "reason": reason}
    if message is not None:
        found["message"] = message
    return {**found, "lastTransitionTime": T0, "observedGeneration": 1}


def counts(phase: str, ready: int, total: int = 2) -> dict[str, Any]:
    return {
        "phase": phase,
        "observedGeneration": 1,
        "readyNodes": ready,
        "totalNodes": total,
        "nodes": f"{ready}/{total}",
        "restarts": 0,
        "preemptions": 0,
        "nodeRestarts": [],
        "stallRestarts": 0,
    }


def test_the_first_status_of_a_pending_job_is_patched_with_its_phase_and_blocker_events() -> None:
    kube, book = RecordingKube(), JobStatusBook()
    new = update_status(kube, book, job(), sts(), [pod(0), waiting("ImagePullBackOff", PULL_BACKOFF)], None, None)
    assert kube.patches == [
        {
            **counts("Pending", 1),
            "conditions": [
                condition(
                    "Ready",
                    "False",
                    "NodesPending",
                    f"1/2 pods running; waiting for pod j-1: ImagePullBackOff: {PULL_BACKOFF}",
                ),
                condition("SpecValid", "True", "Valid"),
                condition("Suspended", "False", "NotSuspended"),
            ],
        }
    ]
    assert kube.events == [
        ("Normal", "Pending", "1/2 pods running"),
        ("Warning", "ImagePullBackOff", f"pod j-1: ImagePullBackOff: {PULL_BACKOFF}"),
    ]
    assert new.to_api() == kube.patches[0]
    assert book.current(job()) == kube.patches[0]  # fresher than the watch until it catches up
    assert book.blocker(job()) == Blocker("j-1", "ImagePullBackOff", PULL_BACKOFF)


def test_an_unchanged_status_is_neither_patched_nor_said_again() -> None:
    kube, book = RecordingKube(), JobStatusBook()
    pods = [pod(0), waiting("ImagePullBackOff", PULL_BACKOFF)]
    update_status(kube, book, job(), sts(), pods, None, None)
    update_status(kube, book, job(), sts(), pods, None, None)
    assert (len(kube.patches), len(kube.events)) == (1, 2)


def test_the_blocker_event_is_said_once_per_cause_not_per_detail() -> None:
    kube, book = RecordingKube(), JobStatusBook()
    update_status(kube, book, job(), sts(), [pod(0), waiting("ErrImagePull", "rpc error 1")], None, None)
    update_status(kube, book, job(), sts(), [pod(0), waiting("ErrImagePull", "rpc error 2")], None, None)
    update_status(kube, book, job(), sts(), [pod(0), waiting("ImagePullBackOff", PULL_BACKOFF)], None, None)
    update_status(kube, book, job(), sts(), [pod(0), pod(1)], None, None)
    assert [p["conditions"][0]["message"] for p in kube.patches] == [
        "1/2 pods running; waiting for pod j-1: ErrImagePull: rpc error 1",
        "1/2 pods running; waiting for pod j-1: ErrImagePull: rpc error 2",
        f"1/2 pods running; waiting for pod j-1: ImagePullBackOff: {PULL_BACKOFF}",
        "2/2 pods running",
    ]
    assert kube.events == [
        ("Normal", "Pending", "1/2 pods running"),
        ("Warning", "ErrImagePull", "pod j-1: ErrImagePull: rpc error 1"),
        ("Warning", "ImagePullBackOff", f"pod j-1: ImagePullBackOff: {PULL_BACKOFF}"),
        ("Normal", "Running", "2/2 pods running"),
    ]
    assert book.blocker(job()) is None


def test_after_an_operator_restart_a_blocker_still_in_force_is_said_once_more() -> None:
    kube, book = RecordingKube(), JobStatusBook()
    update_status(kube, book, job(), sts(), [pod(0), waiting("ErrImagePull", "rpc error 1")], None, None)
    restarted = JobStatusBook()  # remembers nothing; the job's body has the status written before
    update_status(
        kube, restarted, job(kube.patches[-1]), sts(), [pod(0), waiting("ErrImagePull", "rpc error 2")], None, None
    )
    assert kube.events[-1] == ("Warning", "ErrImagePull", "pod j-1: ErrImagePull: rpc error 2")
    assert len(kube.events) == 3


def test_a_restart_backoff_that_ended_is_removed_by_name() -> None:
    held = RestartBackoff(reason=Reason.STALLED.value, restart=2, delay_seconds=10, next_restart_at=T0)
    before = SFTJobStatus(restart_backoff=held).to_api()
    kube = RecordingKube()
    update_status(kube, JobStatusBook(), job(before), sts(), [pod(0), pod(1)], None, None)
    assert kube.patches[0]["restartBackoff"] is None  # a merge patch removes a field only when told to
    assert "restartBackoff" not in SFTJobStatus().to_api()


def test_a_job_deleted_meanwhile_is_not_recorded() -> None:
    kube, book = RecordingKube(refuse=lambda patch: ApiException(status=404, reason="Not Found")), JobStatusBook()
    new = update_status(kube, book, job(), sts(), [pod(0), pod(1)], None, None)
    assert (new.phase.value, kube.patches, kube.events, book.current(job())) == ("Running", [], [], None)


def test_a_progress_summary_the_api_server_refuses_goes_and_the_rest_is_patched() -> None:
    def refuse_progress(patch: dict[str, Any]) -> ApiException | None:
        return ApiException(status=422, reason="Unprocessable Entity") if "progress" in patch else None

    kube, book = RecordingKube(refuse=refuse_progress), JobStatusBook()
    new = update_status(kube, book, job(), sts(), [pod(0), pod(1)], None, None, progress())
    assert kube.patches == [
        {
            **counts("Running", 2),
            "startTime": T0,
            "conditions": [
                condition("Ready", "True", "AllNodesRunning", "2/2 pods running"),
                condition("SpecValid", "True", "Valid"),
                condition("Suspended", "False", "NotSuspended"),
            ],
        }
    ]
    refused = (
        "the API server refused the status with the new progress summary (HTTP 422: Unprocessable Entity); "
        "status.progress keeps the summary last accepted"
    )
    assert kube.events == [("Warning", "ProgressValueDropped", refused), ("Normal", "Running", "2/2 pods running")]
    assert new.progress is None
    update_status(kube, book, job(), sts(), [pod(0), pod(1)], None, None, progress())  # refused again: said once
    assert len(kube.events) == 2


def test_a_stall_restart_is_said_as_a_warning() -> None:
    kube = RecordingKube()
    new = update_status(kube, JobStatusBook(), job(), sts(), [pod(0), pod(1)], None, None, stall="no step for 900 s")
    assert (new.stall_restarts, new.restarts) == (1, 1)
    assert kube.events[-1] == ("Warning", "Stalled", "no step for 900 s")


def test_an_invalid_spec_fails_the_job_and_says_why_once() -> None:
    kube, book = RecordingKube(), JobStatusBook()
    problem = SpecProblem(Reason.INVALID_SPEC, "spec.nnodes: Input should be a valid integer")
    body = job(nnodes="two")
    update_status(kube, book, body, None, [], problem, None)
    assert kube.patches == [
        {
            **counts("Failed", 0, total=1),
            "conditions": [
                condition("Failed", "True", "InvalidSpec", problem.message),
                condition("Ready", "False", "InvalidSpec", "no pods: the spec is invalid"),
                condition("SpecValid", "False", "InvalidSpec", problem.message),
            ],
        }
    ]
    assert kube.events == [("Warning", "Failed", problem.message), ("Warning", "InvalidSpec", problem.message)]
    assert book.standing_refusal(body) == problem
    update_status(kube, book, body, None, [], problem, None)
    assert len(kube.events) == 2


def test_a_dropped_progress_value_is_warned_about_once_per_key() -> None:
    kube, book = RecordingKube(), JobStatusBook()
    big = DroppedValue(key="checkpoints[].samples", path="checkpoints[3].samples", problem="too large", value="10**30")
    warn_dropped_progress(kube, book, job(), [big])
    warn_dropped_progress(kube, book, job(), [big, DroppedValue(key="", path="", problem="not a mapping", value="[]")])
    where = "ConfigMap j-progress (progress.json)"
    assert kube.events == [
        (
            "Warning",
            "ProgressValueDropped",
            f"{where}: dropped status.progress.checkpoints[3].samples = 10**30: too large; the rest of the summary is used",
        ),
        (
            "Warning",
            "ProgressValueDropped",
            f"{where}: ignored: status.progress = []: not a mapping; status.progress keeps the summary last read",
        ),
    ]
    warn_dropped_progress(kube, book, job(uid="u2"), [big])  # a new job of the same name: said again
    assert len(kube.events) == 3


def test_the_book_answers_for_the_job_it_wrote_not_a_namesake() -> None:
    book = JobStatusBook()
    book.record(job(), {"phase": "Running"}, Blocker("j-0", "Unschedulable", ""))
    assert (book.current(job()), book.blocker(job())) == ({"phase": "Running"}, Blocker("j-0", "Unschedulable", ""))
    namesake = job({"phase": "Pending"}, uid="u2")
    assert (book.current(namesake), book.blocker(namesake)) == ({"phase": "Pending"}, None)
    book.forget(("ns", "j"))
    assert (book.current(job()), book.blocker(job())) == (None, None)


def test_check_spec_names_an_invalid_spec_and_an_immutable_change() -> None:
    parsed, problem = check_spec(job(), None)
    assert parsed is not None and problem is None
    parsed, problem = check_spec(job(nnodes=0), None)
    assert parsed is None and problem is not None and problem.reason is Reason.INVALID_SPEC
    parsed, problem = check_spec(job(nnodes=3), sts(nnodes=2))
    assert parsed is not None and problem is not None and problem.reason is Reason.IMMUTABLE_FIELD_CHANGED
    assert "nnodes" in problem.message


def test_the_run_policy_is_read_once_from_the_spec_with_the_models_defaults() -> None:
    assert RunPolicy.from_spec({}) == RunPolicy(
        nnodes=1,
        max_restarts=3,
        active_deadline_s=None,
        startup_timeout_s=1800,
        stall_timeout_s=None,
        ttl_s=None,
        export_uri=None,
    )
    spec = {
        "nnodes": 4,
        "maxRestarts": 0,
        "activeDeadlineSeconds": 3600,
        "startupTimeoutSeconds": 60,
        "stallTimeoutSeconds": 300,
        "ttlSecondsAfterFinished": 0,
        "export": {"uri": "s3://b/p"},
    }
    assert RunPolicy.from_spec(spec) == RunPolicy(
        nnodes=4,
        max_restarts=0,
        active_deadline_s=3600,
        startup_timeout_s=60,
        stall_timeout_s=300,
        ttl_s=0,
        export_uri="s3://b/p",
    )
    # An invalid spec still gets a status: a field of the wrong type falls back to its default alone.
    bad = {"nnodes": "2", "maxRestarts": True, "startupTimeoutSeconds": 60, "export": {"uri": 5}}
    assert RunPolicy.from_spec(bad) == RunPolicy(
        nnodes=1,
        max_restarts=3,
        active_deadline_s=None,
        startup_timeout_s=60,
        stall_timeout_s=None,
        ttl_s=None,
        export_uri=None,
    )
    assert RunPolicy.from_spec({"nnodes": 0}).nnodes == 0  # as the body has it: the spec check refuses it
