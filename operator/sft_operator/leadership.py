"""One active operator: leader election on a coordination.k8s.io Lease (leader_gates.py gates kopf and
writes by it).

Every replica runs kopf (so its admission webhook and liveness endpoint answer), but only the
holder of the Lease processes events: the others' watch streams stay paused through kopf's own
pause (the set of toggles its peering uses), and the operator's API client refuses every write
while this process does not lead. A standby that takes over starts its watches with a listing:
kopf's resume path, as after an operator restart (nothing is written unless something differs).

The rules are client-go's (a Lease's holder renews it every ``retry_period_s``; the pure ones,
what to do with the Lease as read and what to write, are lease_rules.py's):
- a standby takes the Lease over only once it has seen the same record for a whole
  ``leaseDurationSeconds``, timed by its own clock from when it saw the record change (no clock
  skew between machines counts), and with the record's resourceVersion (two standbys cannot
  both win);
- a leader that cannot renew for ``renew_deadline_s`` (< the lease duration) stops leading: the
  process exits at once, before any standby can take over (``renew_deadline_s`` after its last
  renewal began, a standby waits at least ``duration_s`` from the renewal it saw). Exiting is the
  only way to stop handler threads in the middle of a write; the kubelet restarts it as a standby.
- a leader that stops (SIGTERM) releases the Lease, so that a rolling update hands over at once.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft_operator.lease_rules import LeadershipError, LeaseRecord, Step, Timings, lease_spec, micro_time, next_step

log = logging.getLogger("sft_operator")

DEFAULT_LEASE_NAME = "sft-operator"
NAMESPACE_ENV = "POD_NAMESPACE"
POD_NAME_ENV = "POD_ID"  # the chart's downward-API pod name (kopf's peering identity too)
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class NotLeading(RuntimeError):
    """A write attempted by an operator that does not hold the Lease (refused before sending)."""


def default_identity() -> str:
    """The pod's name (or the host's), plus a random part: a restarted container is a new
    candidate, never mistaken for the holder it was before."""
    return f"{os.environ.get(POD_NAME_ENV) or socket.gethostname()}_{secrets.token_hex(4)}"


def default_namespace() -> str | None:
    """$POD_NAMESPACE (the chart's downward API), else the in-cluster ServiceAccount's."""
    if os.environ.get(NAMESPACE_ENV):
        return os.environ[NAMESPACE_ENV]
    try:
        return IN_CLUSTER_NAMESPACE.read_text().strip() or None
    except OSError:
        return None


class LeaderElector:
    """The election loop, in a thread of its own (kopf's event loop may be busy for seconds on a
    2-core node: renewals must not wait for it). ``on_started`` / ``on_stopped`` run in that
    thread when this replica starts or stops leading."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        name: str = DEFAULT_LEASE_NAME,
        identity: str | None = None,
        timings: Timings = Timings(),
        on_started: Callable[[], None] | None = None,
        on_stopped: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.client = api_client
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.timings = timings
        self.on_started = on_started
        self.on_stopped = on_stopped
        self._clock = clock
        self._leading = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen_version = ""
        self._seen_since = 0.0
        self._renewed_at = 0.0
        self._record: LeaseRecord | None = None
        self._last_error = ""
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"

    # -- state --

    @property
    def leading(self) -> bool:
        return self._leading.is_set()

    def wait_until_leading(self, timeout_s: float | None = None) -> bool:
        return self._leading.wait(timeout_s)

    # -- the loop --

    def start(self) -> LeaderElector:
        log.info(
            "leader election: candidate %s for Lease %s/%s (duration %.0f s, renew deadline %.0f s)",
            self.identity,
            self.namespace,
            self.name,
            self.timings.duration_s,
            self.timings.renew_deadline_s,
        )
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            began = self._clock()
            self.attempt()
            self._stop.wait(max(0.0, self.timings.retry_period_s - (self._clock() - began)))

    def attempt(self) -> bool:
        """One round: read the Lease, then create, renew or take it over when due. True when this
        replica holds it afterwards. A leader that could not renew for the renew deadline stops."""
        began = self._clock()
        held = False
        try:
            held = self._try(began)
        except Exception as exc:  # noqa: BLE001 - any failure is "not renewed"; the loop goes on
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            if reason != self._last_error:
                log.warning("leader election: Lease %s/%s not read or written: %s", self.namespace, self.name, reason)
                self._last_error = reason
        else:
            self._last_error = ""
        if held:
            self._renewed_at = began
            if not self.leading:
                self._leading.set()
                log.info("leader election: %s leads (Lease %s/%s)", self.identity, self.namespace, self.name)
                if self.on_started:
                    self.on_started()
        elif self.leading and (
            self._clock() - self._renewed_at >= self.timings.renew_deadline_s
            or (self._record is not None and self._record.holder != self.identity)
        ):
            self._step_down(
                "the Lease was not renewed within the renew deadline"
                if self._record is None or self._record.holder == self.identity
                else f"the Lease is held by {self._record.holder}"
            )
        return held

    def _try(self, began: float) -> bool:
        lease = self._request("GET", f"{self.path}/{self.name}", timeout_s=self._timeout(began), missing_ok=True)
        now = self._clock()
        record = LeaseRecord.of(lease) if lease else None
        self._record = record
        version = record.resource_version if record else ""
        if version != self._seen_version:
            self._seen_version, self._seen_since = version, now
        step = next_step(record, self.identity, now - self._seen_since)
        if step is Step.WAIT:
            return False
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                **({"resourceVersion": record.resource_version} if record else {}),
            },
            "spec": lease_spec(
                self.identity, self.timings.duration_s, datetime.datetime.now(datetime.timezone.utc), record, step
            ),
        }
        if step is Step.TAKE_OVER:
            log.info(
                "leader election: taking Lease %s/%s over from %s",
                self.namespace,
                self.name,
                (record.holder if record else "") or "nobody (released)",
            )
        written = self._request(
            "POST" if record is None else "PUT",
            self.path if record is None else f"{self.path}/{self.name}",
            body=body,
            timeout_s=self._timeout(began),
            conflict_ok=True,
        )
        if written is None:  # 409: another replica wrote first; read again next round
            return False
        self._record = LeaseRecord.of(written)
        self._seen_version, self._seen_since = self._record.resource_version, self._clock()
        return True

    def _timeout(self, began: float) -> float:
        """A leader's request must end before its renew deadline: a renewal still in flight then
        must not keep it leading past the point where a standby may take over."""
        if not self.leading:
            return max(0.5, self.timings.retry_period_s * 2)
        return max(0.2, self.timings.renew_deadline_s - (began - self._renewed_at) - (self._clock() - began))

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout_s: float = 2.0,
        missing_ok: bool = False,
        conflict_ok: bool = False,
    ) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        request = self.client.param_serialize(
            method=method,
            resource_path=path,
            body=body,
            auth_settings=["BearerToken"],
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
        )
        try:
            response = self.client.call_api(*request, _request_timeout=timeout_s)
        except ApiException as exc:
            if (missing_ok and exc.status == 404) or (conflict_ok and exc.status == 409):
                return None
            raise
        response.read()
        if (missing_ok and response.status == 404) or (conflict_ok and response.status == 409):
            return None
        if not 200 <= response.status <= 299:
            raise ApiException(status=response.status, reason=response.reason)
        answer: dict[str, Any] = json.loads(response.data)
        return answer

    def _step_down(self, why: str) -> None:
        self._leading.clear()
        log.error("leader election: %s no longer leads: %s", self.identity, why)
        if self.on_stopped:
            self.on_stopped()

    # -- shutdown --

    def stop(self, release: bool = True) -> None:
        """End the loop; a leader releases the Lease (an empty holder: a standby takes it over
        at its next round instead of after a whole lease duration)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timings.retry_period_s * 3)
        if release and self.leading:
            self._leading.clear()
            try:
                lease = self._request("GET", f"{self.path}/{self.name}", missing_ok=True)
                if lease and LeaseRecord.of(lease).holder == self.identity:
                    lease["spec"] = {
                        **lease["spec"],
                        "holderIdentity": None,
                        "renewTime": micro_time(datetime.datetime.now(datetime.timezone.utc)),
                    }
                    lease.get("metadata", {}).pop("managedFields", None)
                    self._request("PUT", f"{self.path}/{self.name}", body=lease, conflict_ok=True)
                    log.info("leader election: released Lease %s/%s", self.namespace, self.name)
            except Exception as exc:  # noqa: BLE001 - the Lease then expires on its own
                log.warning("leader election: could not release Lease %s/%s: %s", self.namespace, self.name, exc)


def exit_now() -> None:
    """Stop at once (no clean-up: a clean kopf shutdown may still write): the kubelet restarts
    the container, as a standby."""
    logging.shutdown()
    os._exit(1)


@dataclass(frozen=True)
class Election:
    """`sft-operator run --leader-elect`'s settings."""

    namespace: str | None = None  # default: default_namespace()
    lease: str = DEFAULT_LEASE_NAME
    identity: str | None = None  # default: default_identity()
    timings: Timings = Timings()


def start(
    api_client: Any, operator_client: Any, election: Election, on_lost: Callable[[], None] = exit_now
) -> LeaderElector:
    """Set up the gates and start electing (before kopf.run). ``api_client``: the elector's own
    (not gated, not sharing the handlers' connection pool); ``operator_client``: the handlers'."""
    namespace = election.namespace or default_namespace()
    if not namespace:
        raise LeadershipError(
            f"--leader-election-namespace is required outside a pod (no $POD_NAMESPACE, no {IN_CLUSTER_NAMESPACE})"
        )
    from sft_operator import leader_gates, metrics

    pause = leader_gates.KopfPause()
    pause.install()
    metrics.set_leader(0)

    def started() -> None:
        metrics.set_leader(1)
        pause.set_paused(False)

    def lost() -> None:
        pause.set_paused(True)
        metrics.set_leader(0)
        on_lost()

    elector = LeaderElector(
        api_client, namespace, election.lease, election.identity, election.timings, on_started=started, on_stopped=lost
    )
    leader_gates.gate_writes(operator_client, elector)
    leader_gates.elector = elector
    return elector.start()
