"""Leader election (leadership.py): the pure decisions (lease_rules.py), the election loop against an in-memory Lease
store with the API server's optimistic concurrency, the write gate and kopf's pause."""

from __future__ import annotations

import asyncio
import datetime
import inspect
import json
import threading
from typing import Any

import pytest

from sft_operator import leader_gates, leadership
from sft_operator.lease_rules import LeadershipError, LeaseRecord, Step, Timings, lease_spec, next_step

NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.timezone.utc)


def record(holder: str = "a", duration_s: float = 8, transitions: int = 2, version: str = "7") -> LeaseRecord:
    return LeaseRecord(holder, duration_s, transitions, "2026-01-01T00:00:00.000000Z", version)


@pytest.mark.parametrize(
    ("lease", "seen_for", "step"),
    [
        (None, 0.0, Step.CREATE),
        (record("me"), 100.0, Step.RENEW),
        (record("other"), 0.0, Step.WAIT),
        (record("other"), 7.99, Step.WAIT),
        (record("other"), 8.0, Step.TAKE_OVER),
        (record(""), 0.0, Step.TAKE_OVER),  # released
        (record("other", duration_s=15), 10.0, Step.WAIT),  # the record's duration, not ours
    ],
)
def test_next_step(lease: LeaseRecord | None, seen_for: float, step: Step) -> None:
    assert next_step(lease, "me", seen_for) is step


def test_lease_spec_for_each_step() -> None:
    assert lease_spec("me", 8, NOW, None, Step.CREATE) == {
        "holderIdentity": "me",
        "leaseDurationSeconds": 8,
        "acquireTime": "2026-01-02T03:04:05.678901Z",
        "renewTime": "2026-01-02T03:04:05.678901Z",
        "leaseTransitions": 0,
    }
    assert lease_spec("me", 8, NOW, record("me"), Step.RENEW) == {
        "holderIdentity": "me",
        "leaseDurationSeconds": 8,
        "acquireTime": "2026-01-01T00:00:00.000000Z",
        "renewTime": "2026-01-02T03:04:05.678901Z",
        "leaseTransitions": 2,
    }
    assert lease_spec("me", 8, NOW, record("other"), Step.TAKE_OVER) == {
        "holderIdentity": "me",
        "leaseDurationSeconds": 8,
        "acquireTime": "2026-01-02T03:04:05.678901Z",
        "renewTime": "2026-01-02T03:04:05.678901Z",
        "leaseTransitions": 3,
    }


def test_timings_must_let_a_leader_stop_before_a_standby_takes_over() -> None:
    with pytest.raises(LeadershipError, match="retry period < renew deadline < lease duration"):
        Timings(duration_s=5, renew_deadline_s=5, retry_period_s=1)


# --- the loop, against an in-memory Lease store -------------------------------------------------


class Response:
    def __init__(self, status: int, body: dict[str, Any] | None = None):
        self.status, self.reason = status, "x"
        self.data = json.dumps(body or {}).encode()

    def read(self) -> bytes:
        return self.data


class LeaseStore:
    """One Lease with the API server's rules: create once (409 after), replace only with the
    current resourceVersion (409 otherwise)."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.writes: list[tuple[str, str]] = []  # (client, holder written)


class StoreClient:
    """An ApiClient's two methods the elector uses, answered by a LeaseStore; ``down`` makes
    every request fail as an unreachable API server would."""

    def __init__(self, store: LeaseStore, name: str):
        self.store, self.name, self.down = store, name, False
        self.before_write: Any = None

    def param_serialize(self, method: str, resource_path: str, body: Any = None, **_: Any) -> tuple[Any, ...]:
        return (method, resource_path, json.loads(json.dumps(body)) if body else None)

    def call_api(self, method: str, path: str, body: Any, _request_timeout: float | None = None) -> Response:
        if self.down:
            raise OSError("connection refused")
        store = self.store
        if method == "GET":
            return Response(200, store.lease) if store.lease else Response(404)
        if self.before_write is not None:
            hook, self.before_write = self.before_write, None
            hook()
        if method == "POST" and store.lease is not None:
            return Response(409)
        if method == "PUT" and (
            store.lease is None or body["metadata"]["resourceVersion"] != store.lease["metadata"]["resourceVersion"]
        ):
            return Response(409)
        store.version += 1
        body["metadata"]["resourceVersion"] = str(store.version)
        store.lease = body
        store.writes.append((self.name, body["spec"]["holderIdentity"]))
        return Response(201 if method == "POST" else 200, body)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(store: LeaseStore, clock: Clock, name: str, events: list[str]) -> leadership.LeaderElector:
    return leadership.LeaderElector(
        StoreClient(store, name),
        "ns",
        identity=name,
        timings=Timings(8, 5, 1),
        clock=clock,
        on_started=lambda: events.append(f"{name} leads"),
        on_stopped=lambda: events.append(f"{name} stops"),
    )


def test_one_leads_the_other_waits_a_whole_duration_after_the_last_renewal() -> None:
    store, clock, events = LeaseStore(), Clock(), []
    a, b = elector(store, clock, "a", events), elector(store, clock, "b", events)
    assert a.attempt() and not b.attempt()
    for _ in range(5):  # a renews every second; b never takes over
        clock.now += 1
        assert a.attempt() and not b.attempt()
    # a dies: b saw its last renewal at this instant and waits the record's 8 s from there.
    for _ in range(7):
        clock.now += 1
        assert not b.attempt()
    clock.now += 1
    assert b.attempt() and b.leading
    assert events == ["a leads", "b leads"]
    assert store.writes[0] == ("a", "a") and store.writes[-1] == ("b", "b")
    assert store.lease["spec"]["leaseTransitions"] == 1


def test_a_leader_cut_off_stops_before_a_standby_may_take_over() -> None:
    store, clock, events = LeaseStore(), Clock(), []
    a, b = elector(store, clock, "a", events), elector(store, clock, "b", events)
    assert a.attempt() and not b.attempt()
    a.client.down = True  # a partitioned from the API server; b still sees the Lease
    stopped_at = taken_at = None
    for _ in range(20):
        clock.now += 1
        a.attempt()
        if stopped_at is None and not a.leading:
            stopped_at = clock.now
        if b.attempt() and taken_at is None:
            taken_at = clock.now
    assert (stopped_at, taken_at) == (1005.0, 1008.0)  # renew deadline 5 s; duration 8 s
    assert events == ["a leads", "a stops", "b leads"]


def test_a_leader_that_finds_another_holder_stops_at_once() -> None:
    store, clock, events = LeaseStore(), Clock(), []
    a = elector(store, clock, "a", events)
    assert a.attempt()
    store.lease["spec"]["holderIdentity"] = "intruder"
    store.lease["metadata"]["resourceVersion"] = "99"
    clock.now += 1
    assert not a.attempt() and events == ["a leads", "a stops"]


def test_stop_releases_the_lease_for_an_immediate_take_over() -> None:
    store, clock, events = LeaseStore(), Clock(), []
    a, b = elector(store, clock, "a", events), elector(store, clock, "b", events)
    assert a.attempt() and not b.attempt()
    a.stop()
    assert store.lease["spec"]["holderIdentity"] is None and not a.leading
    assert b.attempt()  # no wait for the lease duration


def test_two_standbys_racing_for_an_expired_lease_one_wins() -> None:
    store, clock, events = LeaseStore(), Clock(), []
    a, b, c = (elector(store, clock, name, events) for name in "abc")
    assert a.attempt() and not b.attempt() and not c.attempt()
    clock.now += 8
    # c has read the expired record; b takes it over before c's replace arrives.
    c.client.before_write = lambda: b.attempt()
    assert not c.attempt() and b.leading and not c.leading
    assert [w for w in store.writes if w[0] == "c"] == [] and store.lease["spec"]["holderIdentity"] == "b"


# --- the write gate -------------------------------------------------------------------------------


class RecordingClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def call_api(self, method: str, url: str, *args: Any, **kwargs: Any) -> str:
        self.calls.append((method, url))
        return "answered"


def test_writes_are_refused_unless_leading_reads_and_reviews_pass() -> None:
    store, clock = LeaseStore(), Clock()
    a = elector(store, clock, "a", [])
    client = leader_gates.gate_writes(RecordingClient(), a)
    assert client.call_api("GET", "https://api/api/v1/namespaces/n/pods") == "answered"
    review = "https://api/apis/authorization.k8s.io/v1/namespaces/n/localsubjectaccessreviews"
    assert client.call_api("POST", review) == "answered"
    with pytest.raises(
        leadership.NotLeading, match="PATCH refused: this operator \\(a\\) does not hold Lease ns/sft-operator"
    ):
        client.call_api("PATCH", "https://api/apis/finetune.dev/v1alpha1/namespaces/n/sftjobs/j/status")
    assert a.attempt()
    assert client.call_api("DELETE", "https://api/api/v1/namespaces/n/pods/p") == "answered"


# --- kopf's pause ---------------------------------------------------------------------------------


def test_kopf_starts_every_watch_through_the_orchestrator_with_its_pause_set() -> None:
    """What KopfPause.install relies on in the pinned kopf: spawn_tasks calls
    orchestration.orchestrator (looked up at call time) with operator_paused, the set its watch
    streams pause on."""
    from kopf._core.reactor import orchestration, running

    source = inspect.getsource(running.spawn_tasks)
    assert "orchestration.orchestrator(" in source and "operator_paused=operator_paused" in source
    assert "operator_paused" in inspect.signature(orchestration.orchestrator).parameters


def test_pause_toggle_follows_leadership_from_another_thread() -> None:
    from kopf._cogs.aiokits import aiotoggles

    async def scenario() -> list[bool]:
        paused_set = aiotoggles.ToggleSet(any)
        pause = leader_gates.KopfPause()
        await pause.attach(paused_set)
        seen = [paused_set.is_on()]
        thread = threading.Thread(target=pause.set_paused, args=(False,))
        thread.start()
        thread.join()
        await asyncio.wait_for(paused_set.wait_for(False), 2)
        seen.append(paused_set.is_on())
        pause.set_paused(True)
        await asyncio.wait_for(paused_set.wait_for(True), 2)
        seen.append(paused_set.is_on())
        return seen

    assert asyncio.run(scenario()) == [True, False, True]
