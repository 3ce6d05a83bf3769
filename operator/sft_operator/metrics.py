"""The operator's Prometheus metrics, served on ``/metrics`` (``sft-operator run --metrics-port``).

What is measured, and where:

- jobs by namespace and phase, failed jobs by reason, and per-job training gauges: from each
  status the operator derives (publishing.update_status -> ``observe_job``); ``job_gauges`` is
  the pure status -> gauges mapping;
- reconciles (count by trigger and result, latency histogram) and kopf's retries of them:
  ``timed_reconcile`` around handlers.reconcile;
- the operator's own Kubernetes API requests and errors (by method and HTTP status):
  ``instrument_api_client`` on the operator's client (kopf's watches are kopf's own);
- whether the operator can list and watch SFTJobs (``sft_operator_api_reachable``, from
  readiness.py's check) and whether this replica leads (``sft_operator_leader``, leadership.py);
- the process (CPU, memory, open files) from prometheus-client's process collector.

Label cardinality is bounded. A job's per-job series (labels ``namespace``, ``sftjob``) exist while
the job is Pending, Running or Suspended: they are dropped when it finishes (Succeeded, Failed: it
still counts in ``sft_operator_jobs`` and ``sft_operator_failed_jobs``, whose labels are namespaces
and the enums of phases and reasons) and every series of a job goes when it is deleted. A job's
uid once deleted is remembered (a bounded set) so that a late status derivation cannot bring its
series back. The job's label is ``sftjob``, not ``job``: Prometheus sets ``job`` (the scrape job)
on every target and would rename ours to ``exported_job``.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sft_models.models import ConditionType, Phase, SFTJobStatus

log = logging.getLogger("sft_operator")

DEFAULT_PORT = 8000
ENV_METRICS_PORT = "SFT_METRICS_PORT"
RECONCILE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DELETED_UIDS_REMEMBERED = 4096

JOBS = "sft_operator_jobs"
FAILED_JOBS = "sft_operator_failed_jobs"
# Per-job gauges, labels namespace and sftjob: name -> help. job_gauges() gives their values.
JOB_GAUGES: dict[str, str] = {
    "sft_operator_job_progress_percent": "Training progress in percent (status.progress.percent).",
    "sft_operator_job_samples_seen": "Samples trained so far.",
    "sft_operator_job_epoch": "1-based epoch in progress.",
    "sft_operator_job_throughput_samples_per_second": "Samples per second over the last step (not while Suspended).",
    "sft_operator_job_loss": "Average loss of the last step.",
    "sft_operator_job_validation_loss": "Newest validation loss (jobs with a validation split).",
    "sft_operator_job_eta_seconds": "Remaining samples / throughput (not while Suspended).",
    "sft_operator_job_checkpoints": "Complete hf_format checkpoints.",
    "sft_operator_job_restarts": "Restarts that lost work (counted against spec.maxRestarts).",
    "sft_operator_job_preemptions": "Clean stops that resumed exactly (never fail the job).",
    "sft_operator_job_ready_nodes": "Training pods running.",
}
FINISHED = frozenset({Phase.SUCCEEDED, Phase.FAILED})


def job_gauges(status: SFTJobStatus) -> dict[str, float]:
    """The per-job gauges a status gives (pure): none for a finished job; a training fact the
    status does not have yet (no progress, no loss) is no series, not a 0."""
    if status.phase in FINISHED:
        return {}
    gauges: dict[str, float] = {
        "sft_operator_job_restarts": float(status.restarts),
        "sft_operator_job_preemptions": float(status.preemptions),
        "sft_operator_job_ready_nodes": float(status.ready_nodes),
    }
    progress = status.progress
    if progress is None:
        return gauges
    gauges["sft_operator_job_progress_percent"] = float(progress.percent)
    gauges["sft_operator_job_samples_seen"] = float(progress.samples_seen)
    gauges["sft_operator_job_epoch"] = float(progress.epoch)
    gauges["sft_operator_job_checkpoints"] = float(len(progress.checkpoints))
    if progress.last_loss is not None:
        gauges["sft_operator_job_loss"] = float(progress.last_loss)
    validation = [p.val_loss for p in progress.loss_history or [] if p.val_loss is not None]
    if validation:
        gauges["sft_operator_job_validation_loss"] = validation[-1]
    if status.phase is not Phase.SUSPENDED:  # nothing trains: no rate, no ETA
        if progress.throughput is not None:
            gauges["sft_operator_job_throughput_samples_per_second"] = float(progress.throughput)
        if progress.eta_seconds is not None:
            gauges["sft_operator_job_eta_seconds"] = float(progress.eta_seconds)
    return gauges


def failure_reason(status: SFTJobStatus) -> str:
    """Why a Failed job failed: its Failed condition's reason, else a refused spec's."""
    for wanted, state in ((ConditionType.FAILED, "True"), (ConditionType.SPEC_VALID, "False")):
        for condition in status.conditions:
            if condition.type == wanted.value and condition.status == state and condition.reason:
                return condition.reason
    return "Unknown"


@dataclass(frozen=True)
class _Job:
    uid: str
    phase: Phase
    reason: str | None  # of a Failed job
    gauges: dict[str, float]


class JobsCollector(Collector):
    """Jobs by phase, failed jobs by reason and the per-job gauges, from the statuses seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], _Job] = {}
        self._deleted: deque[str] = deque(maxlen=DELETED_UIDS_REMEMBERED)

    def observe(self, namespace: str, name: str, uid: str, status: SFTJobStatus) -> None:
        with self._lock:
            if uid and uid in self._deleted:
                return
            reason = failure_reason(status) if status.phase is Phase.FAILED else None
            self._jobs[(namespace, name)] = _Job(uid, status.phase, reason, job_gauges(status))

    def forget(self, namespace: str, name: str, uid: str = "") -> None:
        with self._lock:
            if uid and uid not in self._deleted:
                self._deleted.append(uid)
            self._jobs.pop((namespace, name), None)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families({}))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            jobs = dict(self._jobs)
        return iter(self._families(jobs))

    @staticmethod
    def _families(jobs: dict[tuple[str, str], _Job]) -> list[GaugeMetricFamily]:
        by_phase = GaugeMetricFamily(JOBS, "SFTJobs by namespace and phase.", labels=["namespace", "phase"])
        failed = GaugeMetricFamily(
            FAILED_JOBS, "Failed SFTJobs by namespace and reason.", labels=["namespace", "reason"]
        )
        per_job = {
            name: GaugeMetricFamily(name, text, labels=["namespace", "sftjob"]) for name, text in JOB_GAUGES.items()
        }
        counts: dict[str, dict[Phase, int]] = {}
        reasons: dict[tuple[str, str], int] = {}
        for (namespace, name), job in sorted(jobs.items()):
            counts.setdefault(namespace, dict.fromkeys(Phase, 0))[job.phase] += 1
            if job.reason is not None:
                reasons[(namespace, job.reason)] = reasons.get((namespace, job.reason), 0) + 1
            for metric, value in job.gauges.items():
                per_job[metric].add_metric([namespace, name], value)
        for namespace, phases in counts.items():
            for phase, count in phases.items():
                by_phase.add_metric([namespace, phase.value], count)
        for (namespace, reason), count in sorted(reasons.items()):
            failed.add_metric([namespace, reason], count)
        return [by_phase, failed, *per_job.values()]


class OperatorMetrics:
    """Every metric of the operator, in one registry (what /metrics serves)."""

    def __init__(self, process: bool = True) -> None:
        self.registry = CollectorRegistry()
        self.jobs = JobsCollector()
        self.registry.register(self.jobs)
        self.reconciles = Counter(
            "sft_operator_reconciles",
            "Spec reconciles (create, update, resume) by trigger and result.",
            ["reason", "result"],
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "sft_operator_reconcile_duration_seconds",
            "Time one spec reconcile took (converge + status).",
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.handler_retries = Counter(
            "sft_operator_handler_retries",
            "Handler calls that were kopf's retries of a failed one.",
            ["handler"],
            registry=self.registry,
        )
        self.status_patches = Counter(
            "sft_operator_status_patches",
            "Status patches written (a derived status that changed).",
            registry=self.registry,
        )
        self.api_requests = Counter(
            "sft_operator_api_requests",
            "Kubernetes API requests of the operator's client, by method.",
            ["method"],
            registry=self.registry,
        )
        self.api_errors = Counter(
            "sft_operator_api_errors",
            "Failed Kubernetes API requests, by method and HTTP status ('error': no answer, e.g. a timeout).",
            ["method", "code"],
            registry=self.registry,
        )
        self.admission_reviews = Counter(
            "sft_operator_admission_reviews",
            "SFTJob admission reviews the webhook answered, by operation "
            "and result (admitted, invalid, policy, forbidden, unchecked).",
            ["operation", "result"],
            registry=self.registry,
        )
        # Registered on their first value: a series only where the check (or the election) runs,
        # so that a 0 always means "cannot" (or "standing by"), never "not measured".
        self.api_reachable = Gauge(
            "sft_operator_api_reachable",
            "1 while the operator can list and watch SFTJobs (its readiness "
            "check, `run --readiness`), 0 while it cannot.",
            registry=None,
        )
        self.leader = Gauge(
            "sft_operator_leader",
            "1 while this replica holds the leader-election Lease (it alone acts), 0 while it stands by.",
            registry=None,
        )
        self._registered: set[int] = set()
        self._register_lock = threading.Lock()
        if process:
            ProcessCollector(registry=self.registry)

    # --- hooks ------------------------------------------------------------------------------

    def observe_job(self, body: dict[str, Any], status: SFTJobStatus, patched: bool = False) -> None:
        meta = body.get("metadata") or {}
        self.jobs.observe(meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", ""), status)
        if patched:
            self.status_patches.inc()

    def count_admission(self, operation: str | None, result: str) -> None:
        self.admission_reviews.labels(operation or "unknown", result).inc()

    def set_api_reachable(self, value: float) -> None:
        self._set_gauge(self.api_reachable, value)

    def set_leader(self, value: float) -> None:
        self._set_gauge(self.leader, value)

    def _set_gauge(self, gauge: Gauge, value: float) -> None:
        with self._register_lock:
            if id(gauge) not in self._registered:
                self.registry.register(gauge)
                self._registered.add(id(gauge))
        gauge.set(value)

    def forget_job(self, namespace: str, name: str, uid: str = "") -> None:
        self.jobs.forget(namespace, name, uid)

    def timed_reconcile(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """Count and time a kopf handler (kopf calls it with keyword arguments only)."""

        @functools.wraps(handler)
        def timed(*args: Any, **kwargs: Any) -> Any:
            reason = getattr(kwargs.get("reason"), "value", kwargs.get("reason")) or "unknown"
            if kwargs.get("retry"):
                self.handler_retries.labels(handler.__name__).inc()
            start = time.monotonic()
            result = "error"
            try:
                value = handler(*args, **kwargs)
                result = "success"
                return value
            finally:
                self.reconcile_duration.observe(time.monotonic() - start)
                self.reconciles.labels(str(reason), result).inc()

        return timed

    def instrument_api_client(self, client: Any) -> Any:
        """Count the requests and failures of a kubernetes ApiClient (every generated API call
        goes through its call_api)."""
        from kubernetes.client.exceptions import ApiException

        original = client.call_api

        def call_api(*args: Any, **kwargs: Any) -> Any:
            method = _http_method(args, kwargs)
            self.api_requests.labels(method).inc()
            try:
                return original(*args, **kwargs)
            except ApiException as exc:
                self.api_errors.labels(method, str(exc.status or "error")).inc()
                raise
            except Exception:
                self.api_errors.labels(method, "error").inc()
                raise

        client.call_api = call_api
        return client

    def serve(self, port: int, addr: str = "0.0.0.0") -> bool:
        """Serve /metrics on ``port`` (0: not at all) in a daemon thread. A port already taken is
        logged as an error and the operator runs on without metrics: reconciling matters more."""
        if not port:
            return False
        try:
            start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            log.error("metrics: cannot serve on %s:%d (%s); running without /metrics", addr, port, exc)
            return False
        log.info("metrics: serving /metrics on %s:%d", addr, port)
        return True


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _http_method(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The HTTP method of a call_api call. The client's generations disagree on the order of the
    first two arguments: (resource_path, method) before the pydantic-based client, (method, url)
    since; labelling by the wrong one made a series per URL, i.e. per object name (unbounded)."""
    for value in (*args[:2], kwargs.get("method")):
        if isinstance(value, str) and value.upper() in HTTP_METHODS:
            return value.upper()
    return "other"


# The operator's metrics (one process, one operator); tests make their own OperatorMetrics.
METRICS = OperatorMetrics()
observe_job = METRICS.observe_job
forget_job = METRICS.forget_job
set_api_reachable = METRICS.set_api_reachable
count_admission = METRICS.count_admission
set_leader = METRICS.set_leader
timed_reconcile = METRICS.timed_reconcile
instrument_api_client = METRICS.instrument_api_client
serve = METRICS.serve


def metric_names(registry: CollectorRegistry) -> set[str]:
    """Every series name a registry can expose (counters' _total, histograms' _bucket/_sum/_count,
    ...): what a PromQL query may name."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"),
        "gauge": ("",),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names
