"""The launcher's rendezvous checks (issue 15, finding 8): node 0's port must be bindable, and the
endpoint another node reached must be its own job's rendezvous. Exact messages; fake stores here,
real torchrun stores and two jobs on one port in tests/training/test_rendezvous_conflict.py."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from sft_core import contract
from sft_trainer import pod_state
from sft_trainer.errors import PeerUnavailable
from sft_trainer.rendezvous import (
    RDZV_ID_KEY,
    Announcer,
    RendezvousConflict,
    announce_rendezvous_id,
    check_port_free,
    verify_rendezvous_id,
)


class FakeStore:
    """The part of torch's TCPStore the checks use, over one shared dict."""

    def __init__(self, data: dict[str, bytes]):
        self.data = data

    def check(self, keys: list[str]) -> bool:
        return all(key in self.data for key in keys)

    def get(self, key: str) -> bytes:
        return self.data[key]

    def compare_set(self, key: str, expected: str, desired: str) -> bytes:
        current = self.data.get(key)
        if current is None and expected == "" or current == expected.encode():
            self.data[key] = desired.encode()
        return self.data[key]


def _connect(data: dict[str, bytes]):
    return lambda host, port, timeout: FakeStore(data)


def test_free_port_passes() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    check_port_free(port)


def test_port_with_a_listener_is_a_conflict_naming_port_and_field() -> None:
    with socket.socket(socket.AF_INET6 if socket.has_dualstack_ipv6() else socket.AF_INET) as other:
        # Like torch's TCPStore: a wildcard (dual-stack where possible) listener.
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(RendezvousConflict) as raised:
            check_port_free(port)
    assert raised.value.exit_code == contract.EXIT_RENDEZVOUS_CONFLICT == 5
    assert raised.value.message == (
        f"spec.rdzvPort: rendezvous port {port} cannot be bound on this pod (Address already in "
        "use): another process listens on it, e.g. another job's rendezvous on a shared host "
        "network; give one of the jobs a different spec.rdzvPort"
    )


def test_own_rendezvous_passes() -> None:
    verify_rendezvous_id(
        "job-0.job.ns.svc",
        29500,
        "uid-a",
        timeout=5,
        env_name="PET_RDZV_ENDPOINT",
        connect=_connect({RDZV_ID_KEY: b"uid-a"}),
        sleep=lambda _: None,
    )


def test_foreign_rendezvous_is_a_conflict_naming_both_ids() -> None:
    with pytest.raises(RendezvousConflict) as raised:
        verify_rendezvous_id(
            "job-0.job.ns.svc",
            29500,
            "uid-a",
            timeout=5,
            env_name="PET_RDZV_ENDPOINT",
            connect=_connect({RDZV_ID_KEY: b"uid-b"}),
            sleep=lambda _: None,
        )
    assert raised.value.exit_code == contract.EXIT_RENDEZVOUS_CONFLICT
    assert raised.value.message == (
        "spec.rdzvPort: the rendezvous at job-0.job.ns.svc:29500 belongs to another job (rdzv id "
        "uid-b, ours uid-a): two jobs with the same spec.rdzvPort on one network; give one of them "
        "a different spec.rdzvPort"
    )


def test_id_announced_late_is_waited_for() -> None:
    data: dict[str, bytes] = {}
    polls: list[float] = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 3:
            data[RDZV_ID_KEY] = b"uid-a"  # node 0's launcher announces after its torchrun is up

    clock = iter(range(100))
    verify_rendezvous_id(
        "h",
        1,
        "uid-a",
        timeout=30,
        env_name="PET_RDZV_ENDPOINT",
        connect=_connect(data),
        sleep=sleep,
        monotonic=lambda: next(clock),
    )
    assert polls == [0.5, 0.5, 0.5]


def test_no_id_announced_is_bounded_and_says_so() -> None:
    clock = iter(range(100))
    with pytest.raises(PeerUnavailable) as raised:
        verify_rendezvous_id(
            "h",
            1,
            "uid-a",
            timeout=3,
            env_name="PET_RDZV_ENDPOINT",
            connect=_connect({}),
            sleep=lambda _: None,
            monotonic=lambda: next(clock),
        )
    assert raised.value.message == (
        "PET_RDZV_ENDPOINT: the rendezvous at h:1 named no job within 3s (node 0's launcher sets "
        "sft-operator/rdzv-id once its torchrun is up); is the endpoint node 0's?"
    )


def test_endpoint_that_is_no_store_is_peer_unavailable() -> None:
    def refuse(host: str, port: int, timeout: float):
        raise RuntimeError("The client socket has timed out\n while trying to connect")

    with pytest.raises(PeerUnavailable) as raised:
        verify_rendezvous_id(
            "h", 1, "uid-a", timeout=3, env_name="PET_RDZV_ENDPOINT", connect=refuse, sleep=lambda _: None
        )
    assert raised.value.message == (
        "PET_RDZV_ENDPOINT: the rendezvous endpoint h:1 accepts connections but does not answer "
        "as torchrun's store (The client socket has timed out while trying to connect); is the "
        "endpoint node 0's?"
    )


def test_announcer_sets_the_id_once_the_store_is_up() -> None:
    data: dict[str, bytes] = {}
    attempts: list[int] = []

    def connect(host: str, port: int, timeout: float):
        attempts.append(port)
        if len(attempts) < 3:
            raise RuntimeError("connection refused")  # torchrun's store is not up yet
        return FakeStore(data)

    announcer = Announcer(29500, "uid-a", connect=connect, attempt_timeout_s=0.01)
    stop = threading.Event()
    stop.wait = lambda timeout=None: False  # no real sleeping between attempts
    announcer.run(stop)
    assert (announcer.announced, announcer.foreign_id, data, len(attempts)) == (True, None, {RDZV_ID_KEY: b"uid-a"}, 3)
    assert announcer.foreign_owner() is None


def test_announcer_never_overwrites_a_foreign_id_and_reports_it() -> None:
    data = {RDZV_ID_KEY: b"uid-b"}
    with announce_rendezvous_id(29500, "uid-a", connect=_connect(data)) as announcer:
        pass
    assert data == {RDZV_ID_KEY: b"uid-b"}
    assert announcer.foreign_owner() == "uid-b"
    conflict = announcer.conflict()
    assert (conflict.exit_code, conflict.message) == (
        contract.EXIT_RENDEZVOUS_CONFLICT,
        (
            "spec.rdzvPort: rendezvous port 29500 on this pod is another job's rendezvous (rdzv id "
            "uid-b, ours uid-a): two jobs with the same spec.rdzvPort on one network; give one of them "
            "a different spec.rdzvPort"
        ),
    )


def test_announcer_looks_once_more_when_torchrun_failed_first() -> None:
    data = {RDZV_ID_KEY: b"uid-b"}
    announcer = Announcer(29500, "uid-a", connect=_connect(data))  # its thread never ran
    assert announcer.foreign_owner() == "uid-b"


# --- the trainer-exited marker the reporter waits for (finding 7) -----------------------------


def test_trainer_started_removes_a_previous_marker_and_exit_writes_it(tmp_path: Path, monkeypatch) -> None:
    registered = []
    monkeypatch.setattr(pod_state.atexit, "register", lambda *call: registered.append(call))
    marker = tmp_path / contract.TRAINER_EXITED_FILE
    marker.write_text("1\n")  # the previous trainer container's
    path = pod_state.trainer_started({contract.ENV_POD_STATE_DIR: str(tmp_path)})
    assert (path, marker.exists()) == (marker, False)
    assert (tmp_path / contract.TRAINER_RUNNING_FILE).read_text() == f"{os.getpid()}\n"
    assert registered == [(pod_state.write_marker, marker, os.getpid())]
    pod_state.write_marker(marker, os.getpid() + 1)  # a forked child exiting: nothing
    assert not marker.exists()
    pod_state.write_marker(marker, os.getpid())
    assert marker.read_text() == f"{os.getpid()}\n"


def test_without_the_pod_state_dir_nothing_is_registered(monkeypatch) -> None:
    registered = []
    monkeypatch.setattr(pod_state.atexit, "register", lambda *call: registered.append(call))
    assert pod_state.trainer_started({}) is None
    assert registered == []
