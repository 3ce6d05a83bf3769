"""The operator's /metrics on the real control plane: a job's gauges follow its status as the
reporter publishes (faked here as in test_operator_status.py, with the job's own identity), and
every series of the job is gone once it is deleted."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_operator_status import started_job, summary

from devtools import stack
from sft_core.progress import LossPoint, Stage

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Scraper:
    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}/metrics"

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        with urllib.request.urlopen(self.url, timeout=5) as response:
            text = response.read().decode()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def job(self, namespace: str, job: str) -> dict[str, float]:
        """The per-job series of one job: {metric name: value}."""
        wanted = {("namespace", namespace), ("sftjob", job)}
        return {name: value for (name, labels), value in self.samples().items() if labels == wanted}

    def phases(self, namespace: str) -> dict[str, float]:
        return {
            dict(labels)["phase"]: value
            for (name, labels), value in self.samples().items()
            if name == "sft_operator_jobs" and ("namespace", namespace) in labels
        }


@pytest.fixture
def metered_operator(control_plane: Any, crd: str, namespace: str, tmp_path: Path) -> Any:
    port = free_port()
    op = stack.OperatorProcess(
        Path(control_plane.kubeconfig), [namespace], tmp_path / "operator.log", extra_args=["--metrics-port", str(port)]
    )
    try:
        op.start()
    except stack.StackError as exc:
        pytest.fail(str(exc))
    try:
        yield Scraper(port)
    finally:
        op.stop()
        print(f"--- operator log ({op.log_file}) ---\n{op.logs()[-6000:]}")


def test_gauges_follow_the_status_and_go_with_the_job(
    control_plane: Any, cluster: Any, namespace: str, metered_operator: Scraper
) -> None:
    scrape = metered_operator
    reporter = started_job(control_plane, cluster, "metered")
    try:
        assert cluster.wait_for("the job Running on /metrics", lambda: scrape.phases(namespace).get("Running") == 1)
        assert scrape.job(namespace, "metered") == {
            "sft_operator_job_restarts": 0.0,
            "sft_operator_job_preemptions": 0.0,
            "sft_operator_job_ready_nodes": 2.0,
        }

        first = summary(Stage.TRAINING, 40, [], loss="1.5000")
        first.loss_history = [
            LossPoint(samples=20, loss=2.0, lr=1e-4),
            LossPoint(samples=40, loss=1.5, val_loss=1.75, lr=1e-4),
        ]
        reporter.publish(first)
        gauges = cluster.wait_for(
            "the first progress on /metrics",
            lambda: (g := scrape.job(namespace, "metered")).get("sft_operator_job_loss") == 1.5 and g,
        )
        assert gauges == {
            "sft_operator_job_restarts": 0.0,
            "sft_operator_job_preemptions": 0.0,
            "sft_operator_job_ready_nodes": 2.0,
            "sft_operator_job_progress_percent": 20.0,
            "sft_operator_job_samples_seen": 40.0,
            "sft_operator_job_epoch": 1.0,
            "sft_operator_job_checkpoints": 0.0,
            "sft_operator_job_loss": 1.5,
            "sft_operator_job_validation_loss": 1.75,
            "sft_operator_job_throughput_samples_per_second": 12.5,
            "sft_operator_job_eta_seconds": 12.0,
        }

        reporter.publish(summary(Stage.TRAINING, 120, ["samples_100"], loss="0.9000"))
        gauges = cluster.wait_for(
            "the next progress on /metrics",
            lambda: (g := scrape.job(namespace, "metered")).get("sft_operator_job_loss") == 0.9 and g,
        )
        assert (
            gauges["sft_operator_job_progress_percent"],
            gauges["sft_operator_job_samples_seen"],
            gauges["sft_operator_job_epoch"],
            gauges["sft_operator_job_checkpoints"],
        ) == (60.0, 120.0, 2.0, 1.0)
        assert "sft_operator_job_validation_loss" not in gauges  # that summary has no history

        samples = scrape.samples()
        assert samples[("sft_operator_reconciles_total", frozenset({("reason", "create"), ("result", "success")}))] >= 1
        assert samples[("sft_operator_reconcile_duration_seconds_count", frozenset())] >= 1
        assert samples[("sft_operator_status_patches_total", frozenset())] >= 3
        assert sum(v for (name, _), v in samples.items() if name == "sft_operator_api_requests_total") >= 5
    finally:
        reporter.close()

    cluster.delete_job("metered")
    cluster.wait_for(
        "the job's series to go",
        lambda: not scrape.job(namespace, "metered") and not scrape.phases(namespace),
        timeout_s=30,
    )
    assert not [
        key for key in scrape.samples() if ("sftjob", "metered") in key[1] or ("namespace", namespace) in key[1]
    ]
