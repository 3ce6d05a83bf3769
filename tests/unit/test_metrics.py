"""The operator's metrics (sft_operator.metrics): the status -> gauges mapping, exact exposition,
series dropped on finish and deletion, reconcile timing, API errors, the HTTP server."""

from __future__ import annotations

import logging
import socket
import urllib.request

import pytest
from kubernetes.client.exceptions import ApiException
from prometheus_client import generate_latest

from sft_core.progress import CheckpointInfo, LossPoint, Stage, TrainingProgress
from sft_models.models import SFTJobStatus
from sft_operator.metrics import JOB_GAUGES, OperatorMetrics, failure_reason, job_gauges, metric_names

T = "2026-01-01T00:00:00Z"
PROGRESS = TrainingProgress(
    stage=Stage.TRAINING,
    epoch=2,
    num_epochs=3,
    samples_seen=120,
    total_samples=300,
    percent=40,
    last_loss="1.2345",
    throughput="12.50",
    eta_seconds=14,
    checkpoints=[CheckpointInfo(name="samples_100", path="hf_format/samples_100", samples=100, epoch=1, time=T)],
    loss_history=[
        LossPoint(samples=40, loss=2.0, val_loss=2.5),
        LossPoint(samples=80, loss=1.5, val_loss=1.75),
        LossPoint(samples=120, loss=1.2345),
    ],
)


def _status(phase: str, progress: TrainingProgress | None = PROGRESS, **fields) -> SFTJobStatus:
    return SFTJobStatus(
        phase=phase, progress=progress, restarts=1, preemptions=2, ready_nodes=2, total_nodes=2, **fields
    )


def _condition(type_: str, status: str, reason: str) -> dict:
    return {"type": type_, "status": status, "reason": reason, "lastTransitionTime": T}


def test_running_job_gauges() -> None:
    assert job_gauges(_status("Running")) == {
        "sft_operator_job_restarts": 1.0,
        "sft_operator_job_preemptions": 2.0,
        "sft_operator_job_ready_nodes": 2.0,
        "sft_operator_job_progress_percent": 40.0,
        "sft_operator_job_samples_seen": 120.0,
        "sft_operator_job_epoch": 2.0,
        "sft_operator_job_checkpoints": 1.0,
        "sft_operator_job_loss": 1.2345,
        "sft_operator_job_validation_loss": 1.75,
        "sft_operator_job_throughput_samples_per_second": 12.5,
        "sft_operator_job_eta_seconds": 14.0,
    }
    assert set(job_gauges(_status("Running"))) == set(JOB_GAUGES)


def test_suspended_job_has_no_rate_nor_eta_and_a_job_without_progress_only_counts() -> None:
    suspended = job_gauges(_status("Suspended"))
    assert "sft_operator_job_throughput_samples_per_second" not in suspended
    assert "sft_operator_job_eta_seconds" not in suspended
    assert suspended["sft_operator_job_loss"] == 1.2345
    assert job_gauges(_status("Pending", progress=None)) == {
        "sft_operator_job_restarts": 1.0,
        "sft_operator_job_preemptions": 2.0,
        "sft_operator_job_ready_nodes": 2.0,
    }
    no_validation = PROGRESS.model_copy(update={"loss_history": None, "last_loss": None})
    gauges = job_gauges(_status("Running", progress=no_validation))
    assert "sft_operator_job_validation_loss" not in gauges and "sft_operator_job_loss" not in gauges


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_finished_job_has_no_per_job_series(phase: str) -> None:
    assert job_gauges(_status(phase)) == {}


def test_failure_reason() -> None:
    assert (
        failure_reason(
            _status(
                "Failed",
                conditions=[_condition("SpecValid", "True", "Valid"), _condition("Failed", "True", "TooManyRestarts")],
            )
        )
        == "TooManyRestarts"
    )
    assert (
        failure_reason(_status("Failed", conditions=[_condition("SpecValid", "False", "InvalidSpec")])) == "InvalidSpec"
    )
    assert failure_reason(_status("Failed")) == "Unknown"


def _body(name: str, uid: str, namespace: str = "team-a") -> dict:
    return {"metadata": {"namespace": namespace, "name": name, "uid": uid}}


def _lines(metrics: OperatorMetrics, prefix: str) -> list[str]:
    text = generate_latest(metrics.registry).decode()
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_exposition_by_phase_reason_and_job_then_gone_on_finish_and_delete() -> None:
    metrics = OperatorMetrics(process=False)
    metrics.observe_job(_body("a", "u1"), _status("Running"), patched=True)
    metrics.observe_job(
        _body("b", "u2"), _status("Failed", conditions=[_condition("Failed", "True", "ConfigRejected")])
    )
    metrics.observe_job(_body("c", "u3", "team-b"), _status("Pending", progress=None))
    assert _lines(metrics, "sft_operator_jobs{") == [
        'sft_operator_jobs{namespace="team-a",phase="Pending"} 0.0',
        'sft_operator_jobs{namespace="team-a",phase="Running"} 1.0',
        'sft_operator_jobs{namespace="team-a",phase="Suspended"} 0.0',
        'sft_operator_jobs{namespace="team-a",phase="Succeeded"} 0.0',
        'sft_operator_jobs{namespace="team-a",phase="Failed"} 1.0',
        'sft_operator_jobs{namespace="team-b",phase="Pending"} 1.0',
        'sft_operator_jobs{namespace="team-b",phase="Running"} 0.0',
        'sft_operator_jobs{namespace="team-b",phase="Suspended"} 0.0',
        'sft_operator_jobs{namespace="team-b",phase="Succeeded"} 0.0',
        'sft_operator_jobs{namespace="team-b",phase="Failed"} 0.0',
    ]
    assert _lines(metrics, "sft_operator_failed_jobs{") == [
        'sft_operator_failed_jobs{namespace="team-a",reason="ConfigRejected"} 1.0'
    ]
    assert _lines(metrics, "sft_operator_job_loss{") == ['sft_operator_job_loss{namespace="team-a",sftjob="a"} 1.2345']
    assert _lines(metrics, "sft_operator_job_restarts{") == [
        'sft_operator_job_restarts{namespace="team-a",sftjob="a"} 1.0',
        'sft_operator_job_restarts{namespace="team-b",sftjob="c"} 1.0',
    ]
    assert _lines(metrics, "sft_operator_status_patches_total") == ["sft_operator_status_patches_total 1.0"]

    metrics.observe_job(_body("a", "u1"), _status("Succeeded"))  # finished: per-job series go
    assert not [line for line in _lines(metrics, "sft_operator_job_") if 'sftjob="a"' in line]
    assert 'sft_operator_jobs{namespace="team-a",phase="Succeeded"} 1.0' in _lines(metrics, "sft_operator_jobs{")

    for name, uid, namespace in (("a", "u1", "team-a"), ("b", "u2", "team-a"), ("c", "u3", "team-b")):
        metrics.forget_job(namespace, name, uid)
    assert _lines(metrics, "sft_operator_jobs{") == []
    assert _lines(metrics, "sft_operator_failed_jobs{") == []
    assert _lines(metrics, "sft_operator_job_") == []
    # A late derivation of a deleted job does not bring it back; a new job of that name does.
    metrics.observe_job(_body("a", "u1"), _status("Running"))
    assert _lines(metrics, "sft_operator_job_loss{") == []
    metrics.observe_job(_body("a", "u9"), _status("Running"))
    assert _lines(metrics, "sft_operator_job_loss{") == ['sft_operator_job_loss{namespace="team-a",sftjob="a"} 1.2345']


def test_reconcile_is_counted_and_timed_and_retries_counted() -> None:
    metrics = OperatorMetrics(process=False)

    def reconcile(**kwargs) -> str:
        if kwargs.get("fail"):
            raise RuntimeError("conflict")
        return "done"

    timed = metrics.timed_reconcile(reconcile)
    assert timed.__qualname__ == reconcile.__qualname__  # kopf's handler id stays the same
    assert timed(reason="create", retry=0) == "done"
    with pytest.raises(RuntimeError):
        timed(reason="update", retry=0, fail=True)
    timed(reason="update", retry=1)
    assert _lines(metrics, "sft_operator_reconciles_total") == [
        'sft_operator_reconciles_total{reason="create",result="success"} 1.0',
        'sft_operator_reconciles_total{reason="update",result="error"} 1.0',
        'sft_operator_reconciles_total{reason="update",result="success"} 1.0',
    ]
    assert _lines(metrics, "sft_operator_reconcile_duration_seconds_count") == [
        "sft_operator_reconcile_duration_seconds_count 3.0"
    ]
    assert _lines(metrics, "sft_operator_handler_retries_total") == [
        'sft_operator_handler_retries_total{handler="reconcile"} 1.0'
    ]


def test_api_requests_and_errors_are_counted() -> None:
    metrics = OperatorMetrics(process=False)

    class Client:
        def call_api(self, resource_path: str, method: str, **kwargs):
            if kwargs.get("status"):
                raise ApiException(status=kwargs["status"])
            if kwargs.get("timeout"):
                raise TimeoutError("read timed out")
            return "ok"

    client = metrics.instrument_api_client(Client())
    assert client.call_api("/api/v1/x", "GET") == "ok"
    for failure in ({"status": 409}, {"status": 409}, {"timeout": True}):
        with pytest.raises((ApiException, TimeoutError)):
            client.call_api("/api/v1/x", "PATCH", **failure)
    assert _lines(metrics, "sft_operator_api_requests_total") == [
        'sft_operator_api_requests_total{method="GET"} 1.0',
        'sft_operator_api_requests_total{method="PATCH"} 3.0',
    ]
    assert _lines(metrics, "sft_operator_api_errors_total") == [
        'sft_operator_api_errors_total{code="409",method="PATCH"} 2.0',
        'sft_operator_api_errors_total{code="error",method="PATCH"} 1.0',
    ]


def test_api_requests_are_labelled_by_method_with_the_current_client_signature() -> None:
    """kubernetes >= 32's ApiClient.call_api(method, url, ...): the label is the method, never the
    URL (a series per object name would grow without bound)."""
    metrics = OperatorMetrics(process=False)

    class Client:
        def call_api(self, method: str, url: str, header_params=None, body=None, **kwargs):
            return "ok"

    client = metrics.instrument_api_client(Client())
    for name in ("a", "b", "c"):
        client.call_api("GET", f"https://127.0.0.1:6443/api/v1/namespaces/ns/configmaps/{name}")
    client.call_api("POST", "https://127.0.0.1:6443/api/v1/namespaces/ns/configmaps", body={})
    assert _lines(metrics, "sft_operator_api_requests_total") == [
        'sft_operator_api_requests_total{method="GET"} 3.0',
        'sft_operator_api_requests_total{method="POST"} 1.0',
    ]


def test_metric_names_include_every_series_suffix() -> None:
    names = metric_names(OperatorMetrics().registry)
    assert {
        "sft_operator_jobs",
        "sft_operator_reconciles_total",
        "sft_operator_reconcile_duration_seconds_bucket",
        "sft_operator_api_errors_total",
        "process_resident_memory_bytes",
        *JOB_GAUGES,
    } <= names


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_scrape_off_and_a_taken_port(caplog: pytest.LogCaptureFixture) -> None:
    metrics = OperatorMetrics(process=False)
    metrics.observe_job(_body("a", "u1"), _status("Running"))
    assert metrics.serve(0) is False
    port = _free_port()
    assert metrics.serve(port, addr="127.0.0.1") is True
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'sft_operator_job_progress_percent{namespace="team-a",sftjob="a"} 40.0' in text
    with caplog.at_level(logging.ERROR, logger="sft_operator"):
        assert OperatorMetrics(process=False).serve(port, addr="127.0.0.1") is False
    assert "running without /metrics" in caplog.text
