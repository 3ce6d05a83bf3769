"""sft() / SFTAlgorithm on the real control plane: the exact SFTJob created, local validation that
creates nothing, and waiting that follows the status the operator writes (driven here through the
status subresource, as the operator would) to Succeeded or Failed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import kubernetes
import pytest

from sft_client.api import (
    InstructLabTrainingSFTBackend,
    SFTAlgorithm,
    SFTJobFailedError,
    SFTParameterError,
    sft,
    wait_for_job,
)
from sft_client.api.display import ProgressDisplay
from sft_core import contract
from sft_models.models import SFTJobStatus, parse_spec

pytestmark = pytest.mark.integration

# The seed's call, moved to the cluster: paths on claims, cluster settings keyword-only.
SEED_CALL: dict[str, Any] = dict(
    model_path="Qwen/Qwen2.5-7B-Instruct",
    data_path="pvc://datasets/sft/training_data.jsonl",
    ckpt_output_dir="pvc://checkpoints/qwen-run",
    num_epochs=3,
    effective_batch_size=32,
    learning_rate=2e-5,
    max_seq_len=2048,
    max_tokens_per_gpu=45000,
    backend="instructlab-training",
    nnodes=2,
    nproc_per_node=8,
    keep_last_checkpoint_only=True,
)

EXPECTED_SPEC: dict[str, Any] = {
    "modelPath": "Qwen/Qwen2.5-7B-Instruct",
    "dataPath": "/mnt/pvc/datasets/sft/training_data.jsonl",
    "numEpochs": 3,
    "effectiveBatchSize": 32,
    "learningRate": 2e-5,
    "maxSeqLen": 2048,
    "maxTokensPerGpu": 45000,
    "extraArgs": {"keep_last_checkpoint_only": True},
    "nnodes": 2,
    "nprocPerNode": 8,
    "checkpoints": {"existingClaim": "checkpoints", "path": "qwen-run"},
    "pod": {
        "image": "sft-trainer:custom",
        "volumes": [{"name": "pvc-datasets", "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True}}],
        "volumeMounts": [{"name": "pvc-datasets", "mountPath": "/mnt/pvc/datasets", "readOnly": True}],
    },
}


def restricted(actual: Any, like: Any) -> Any:
    """``actual`` with only the (nested) keys that ``like`` has: what the apiserver kept of what
    was sent, without the defaults it added."""
    if isinstance(like, dict) and isinstance(actual, dict):
        return {key: restricted(actual[key], value) for key, value in like.items() if key in actual}
    return actual


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def custom(api_client: Any) -> Any:
    return kubernetes.client.CustomObjectsApi(api_client)


def jobs_in(api_client: Any, namespace: str) -> list[dict[str, Any]]:
    return custom(api_client).list_namespaced_custom_object(
        contract.GROUP, contract.VERSION, namespace, contract.PLURAL
    )["items"]


def patch_status(api_client: Any, namespace: str, name: str, status: dict[str, Any]) -> None:
    """What the operator does: a merge patch of the status subresource."""
    custom(api_client).patch_namespaced_custom_object_status(
        contract.GROUP, contract.VERSION, namespace, contract.PLURAL, name, {"status": status}
    )


def condition(type_: str, status: str, reason: str, message: str = "as the operator says") -> dict[str, Any]:
    # Not "": the 1.20 apiserver reads an empty message as null and refuses it (status.py omits it).
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": now()}


class StatusDriver:
    """Plays the operator: once the job exists, writes each status in turn, a little apart."""

    def __init__(self, api_client: Any, namespace: str, name: str, statuses: list[dict[str, Any]]):
        self.api_client, self.namespace, self.name, self.statuses = api_client, namespace, name, statuses
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            deadline = time.monotonic() + 30
            while not any(j["metadata"]["name"] == self.name for j in jobs_in(self.api_client, self.namespace)):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"SFTJob {self.name} never appeared")
                time.sleep(0.1)
            for status in self.statuses:
                time.sleep(0.3)
                patch_status(self.api_client, self.namespace, self.name, status)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def __enter__(self) -> StatusDriver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(timeout=30)
        if self.error is not None:
            raise AssertionError(f"the status driver failed: {self.error!r}") from self.error


def sftjob_reads(control_plane: Any) -> dict[str, int]:
    """GET/LIST/WATCH requests the apiserver has served for sftjobs so far (its /metrics)."""
    status, body = control_plane.get("/metrics")
    assert status == 200
    counts = {"GET": 0, "LIST": 0, "WATCH": 0}
    for line in body.decode().splitlines():
        if line.startswith("apiserver_request_total{") and 'resource="sftjobs"' in line and 'subresource=""' in line:
            for verb in counts:
                if f'verb="{verb}"' in line:
                    counts[verb] += int(float(line.rsplit(" ", 1)[1]))
    return counts


@pytest.fixture
def in_namespace(crd: str, api_client: Any, namespace: str) -> Callable[..., dict[str, Any]]:
    """The seed call's parameters with this test's cluster settings added."""

    def params(**overrides: Any) -> dict[str, Any]:
        values = dict(SEED_CALL, api_client=api_client, namespace=namespace, show_progress=False)
        values.update(overrides)
        return values

    return params


def test_sft_creates_exactly_the_expected_sftjob(in_namespace: Any, api_client: Any, namespace: str) -> None:
    result = sft(**in_namespace(name="qwen-run", image="sft-trainer:custom", wait=False))

    (job,) = jobs_in(api_client, namespace)
    assert job["metadata"]["name"] == "qwen-run" == result.name
    assert result.namespace == namespace
    assert result.phase == "Pending"  # no status yet: nothing has run
    # Field by field: every field the call set, with the value it set...
    assert restricted(job["spec"], EXPECTED_SPEC) == EXPECTED_SPEC
    assert result.manifest["spec"] == EXPECTED_SPEC
    # ...and everything else is the apiserver's defaulting, which equals the models' defaults.
    assert parse_spec(job["spec"]) == parse_spec(EXPECTED_SPEC)


def test_class_form_with_the_seed_backend_name_creates_the_job(
    in_namespace: Any, api_client: Any, namespace: str
) -> None:
    backend = InstructLabTrainingSFTBackend(api_client=api_client, namespace=namespace, wait=False, show_progress=False)
    params = {k: v for k, v in SEED_CALL.items() if k != "backend"}
    result = SFTAlgorithm(backend=backend).train(**params, name="class-form")
    (job,) = jobs_in(api_client, namespace)
    assert job["metadata"]["name"] == "class-form" == result.name
    assert parse_spec(job["spec"]) == parse_spec(
        {**EXPECTED_SPEC, "pod": {k: v for k, v in EXPECTED_SPEC["pod"].items() if k != "image"}}
    )


def test_generated_name_and_kubeconfig_connection(
    crd: str, control_plane: Any, api_client: Any, namespace: str
) -> None:
    params = dict(
        SEED_CALL, kubeconfig=str(control_plane.kubeconfig), namespace=namespace, wait=False, show_progress=False
    )
    result = sft(**params)
    (job,) = jobs_in(api_client, namespace)
    assert job["metadata"]["name"] == result.name
    assert (
        result.name.startswith("sft-qwen2-5-7b-instruct-") and len(result.name) == len("sft-qwen2-5-7b-instruct-") + 5
    )


def test_bad_parameters_fail_locally_naming_each_and_create_nothing(
    in_namespace: Any, api_client: Any, namespace: str
) -> None:
    # A kubeconfig that does not exist: reaching the cluster would fail differently.
    bad = in_namespace(
        api_client=None,
        kubeconfig="/nonexistent/kubeconfig",
        model_path="./my-model",
        max_tokens_per_gpu=1024,  # < max_seq_len
        node_rank=1,
        not_a_training_arg=True,
    )
    with pytest.raises(SFTParameterError) as info:
        sft(**bad)
    assert info.value.params == ["node_rank", "model_path", "not_a_training_arg", "max_tokens_per_gpu"]
    assert "pvc://<claim>/<path>" in str(info.value)

    with pytest.raises(SFTParameterError) as info:
        sft(**in_namespace(max_tokens_per_gpu=1024, not_a_training_arg=True))
    # The operator's own messages, with the parameter named.
    assert [(p.param, p.spec_path, p.message) for p in info.value.parameters] == [
        ("not_a_training_arg", "spec.extraArgs.not_a_training_arg", "unknown instructlab-training argument"),
        ("max_tokens_per_gpu", "spec.maxTokensPerGpu", "must be at least spec.maxSeqLen (one full sequence per GPU)"),
    ]
    assert jobs_in(api_client, namespace) == []


def test_wait_follows_running_to_succeeded_with_a_watch(
    in_namespace: Any, api_client: Any, namespace: str, control_plane: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    statuses = [
        {
            "phase": "Running",
            "nodes": "2/2",
            "readyNodes": 2,
            "totalNodes": 2,
            "startTime": now(),
            "conditions": [condition("Ready", "True", "AllNodesRunning")],
        },
        {"phase": "Running", "restarts": 1},
        {"phase": "Succeeded", "completionTime": now(), "conditions": [condition("Ready", "False", "Completed")]},
    ]
    before = sftjob_reads(control_plane)
    with StatusDriver(api_client, namespace, "follow-me", statuses):
        result = sft(**in_namespace(name="follow-me", show_progress=True, timeout=60))
    reads = {verb: n - before[verb] for verb, n in sftjob_reads(control_plane).items()}

    assert result.phase == "Succeeded" and result.succeeded
    assert result.status["completionTime"]
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"Created SFTJob {namespace}/follow-me"
    assert f"{namespace}/follow-me Running" in lines
    assert lines[-1] == f"{namespace}/follow-me Succeeded"
    # Followed by a watch, not by polling: one read, one watch, for three changes.
    assert reads["GET"] <= 2 and reads["WATCH"] == 1, reads


def test_a_failed_job_raises_with_its_reason_and_message(in_namespace: Any, api_client: Any, namespace: str) -> None:
    statuses = [
        {"phase": "Running", "conditions": [condition("Ready", "True", "AllNodesRunning")]},
        {
            "phase": "Failed",
            "completionTime": now(),
            "conditions": [
                condition("Ready", "False", "NodesPending"),
                condition("Failed", "True", "RestartLimitExceeded", "trainer exited 1: CUDA out of memory"),
            ],
        },
    ]
    with StatusDriver(api_client, namespace, "doomed", statuses), pytest.raises(SFTJobFailedError) as info:
        sft(**in_namespace(name="doomed", timeout=60))
    assert (info.value.reason, info.value.message) == ("RestartLimitExceeded", "trainer exited 1: CUDA out of memory")
    assert info.value.result.phase == "Failed"
    assert "RestartLimitExceeded: trainer exited 1: CUDA out of memory" in str(info.value)


def test_ctrl_c_stops_waiting_not_the_job(in_namespace: Any, api_client: Any, namespace: str) -> None:
    sft(**in_namespace(name="keeps-going", wait=False))

    class InterruptedDisplay(ProgressDisplay):
        def update(self, job: dict[str, Any]) -> Any:
            super().update(job)
            if (job.get("status") or {}).get("phase") == "Running":
                raise KeyboardInterrupt

    notes: list[str] = []
    display = InterruptedDisplay(rich_output=False)
    display.note = notes.append  # type: ignore[method-assign, assignment]  # records the notes instead
    with StatusDriver(api_client, namespace, "keeps-going", [{"phase": "Running"}]):
        with pytest.raises(KeyboardInterrupt):
            wait_for_job(api_client, "keeps-going", namespace, timeout=30, display=display)
    assert notes == [
        f"Stopped waiting; SFTJob {namespace}/keeps-going keeps running. "
        f"Follow it again with: sft-operator wait keeps-going -n {namespace}"
    ]
    (job,) = jobs_in(api_client, namespace)
    assert job["status"]["phase"] == "Running" and job["metadata"].get("deletionTimestamp") is None


def test_wait_times_out_and_leaves_the_job_running(in_namespace: Any, api_client: Any, namespace: str) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="keeps running"):
        sft(**in_namespace(name="slow", timeout=2))
    assert time.monotonic() - started < 10
    assert [j["metadata"]["name"] for j in jobs_in(api_client, namespace)] == ["slow"]


# The status reporter's facts live in status.progress (sft_core.progress). Until that field
# is in SFTJobStatus, the CRD's status schema prunes it and a result has no checkpoints; the
# test below checks whichever is true, so it turns strict by itself when the field lands.
PROGRESS_IN_STATUS = "progress" in SFTJobStatus.model_fields


def test_wait_returns_the_checkpoints_and_last_metrics_from_status(
    in_namespace: Any, api_client: Any, namespace: str
) -> None:
    from sft_core.progress import CheckpointInfo, Stage, TrainingProgress

    def progress(**values: Any) -> dict[str, Any]:
        return TrainingProgress(num_epochs=3, total_samples=300, **values).to_api()

    checkpoints = [
        CheckpointInfo(name=f"samples_{n}", path=f"hf_format/samples_{n}", samples=n, epoch=e, time=now())
        for n, e in ((100, 1), (200, 2), (300, 3))
    ]
    statuses = [
        {
            "phase": "Running",
            "progress": progress(
                stage=Stage.TRAINING,
                epoch=1,
                samples_seen=50,
                percent=16,
                last_loss="1.2500",
                throughput="12.5",
                eta_seconds=20,
            ),
        },
        {
            "phase": "Running",
            "progress": progress(
                stage=Stage.TRAINING,
                epoch=2,
                samples_seen=150,
                percent=50,
                last_loss="0.9000",
                checkpoints=checkpoints[:1],
            ),
        },
        {
            "phase": "Succeeded",
            "progress": progress(
                stage=Stage.COMPLETED,
                epoch=3,
                samples_seen=300,
                percent=100,
                last_loss="0.5000",
                throughput="13.0",
                checkpoints=checkpoints,
            ),
        },
    ]
    with StatusDriver(api_client, namespace, "with-ckpts", statuses):
        result = sft(**in_namespace(name="with-ckpts", timeout=60))
    assert result.phase == "Succeeded"
    if not PROGRESS_IN_STATUS:
        assert "progress" not in result.status  # pruned by the apiserver
        assert (result.checkpoints, result.metrics) == ([], {"num_epochs": 3})  # from the spec
        return
    assert result.checkpoint_paths == [
        "pvc://checkpoints/qwen-run/hf_format/samples_100",
        "pvc://checkpoints/qwen-run/hf_format/samples_200",
        "pvc://checkpoints/qwen-run/hf_format/samples_300",
    ]
    assert [c.pod_path for c in result.checkpoints][-1] == "/checkpoints/qwen-run/hf_format/samples_300"
    assert result.metrics == {
        "stage": "Completed",
        "epoch": 3,
        "num_epochs": 3,
        "samples_seen": 300,
        "total_samples": 300,
        "percent": 100.0,
        "loss": 0.5,
        "throughput": 13.0,
    }


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    # Only threads this test started: daemon threads another module left in the same process (a
    # unit test's HTTP server) errored every test here when that module ran first.
    before = set(threading.enumerate())
    yield
    assert not [
        t
        for t in threading.enumerate()
        if t not in before and t.name.startswith("Thread-") and t.is_alive() and t.daemon
    ], "a status driver thread is still running"
