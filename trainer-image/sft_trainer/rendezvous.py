"""The rendezvous, checked before torchrun gets it: node 0's port is free, node 0's endpoint is
reachable, and the endpoint another node reached is its own job's rendezvous, not another's.

Two jobs with the same ``rdzvPort`` whose pods share a network (hostNetwork pods)
collide: one node 0 cannot bind (torchrun's traceback: EADDRINUSE), and the other job's nodes
happily join the first job's TCPStore, where they wait under their own run id until torchrun's
rendezvous timeout, while every pod looks Running. So node 0 checks that the port can be bound
(``check_port_free``) and, once its torchrun's store is up, writes its rendezvous id into that
store (``announce_rendezvous_id``, set-if-absent); the other nodes read it back before starting
torchrun (``verify_rendezvous_id``) and exit with ``EXIT_RENDEZVOUS_CONFLICT`` on a mismatch.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sft_core import contract

from .errors import LauncherError, PeerUnavailable

log = logging.getLogger("sft_trainer")

# The key node 0's launcher sets in torchrun's TCPStore (outside the PrefixStore namespaces that
# torchrun and torch.distributed use).
RDZV_ID_KEY = "sft-operator/rdzv-id"
RDZV_PORT_FIELD = "spec.rdzvPort"
ANNOUNCE_ATTEMPT_TIMEOUT_S = 5.0


class RendezvousConflict(LauncherError):
    """Another process (another job's rendezvous) holds our rendezvous port or endpoint."""

    exit_code = contract.EXIT_RENDEZVOUS_CONFLICT


def wait_reachable(
    host: str,
    port: int,
    *,
    timeout: float,
    env_name: str,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> None:
    deadline = monotonic() + timeout
    last_error = "no attempt"
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, timeout)):
                return
        except OSError as error:  # DNS not there yet, refused, unreachable, timed out
            last_error = str(error) or type(error).__name__
        if monotonic() >= deadline:
            raise PeerUnavailable(
                f"{env_name}: rendezvous endpoint {host}:{port} unreachable for {timeout:.0f}s "
                f"(last error: {last_error}); is node 0 running?"
            )
        sleep(1.0)


def check_port_free(port: int) -> None:
    """Node 0, just before torchrun: can its store listen on the rendezvous port on this pod?"""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # As torch's TCPStore does: a TIME_WAIT leftover of this pod's previous run is no conflict,
        # a listener (on any address, IPv4 or dual-stack IPv6) is.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("", port))
    except OSError as error:
        reason = error.strerror or str(error)
        raise RendezvousConflict(
            f"{RDZV_PORT_FIELD}: rendezvous port {port} cannot be bound on this pod ({reason}): "
            "another process listens on it, e.g. another job's rendezvous on a shared host "
            f"network; give one of the jobs a different {RDZV_PORT_FIELD}"
        ) from None
    finally:
        sock.close()


def tcp_store_client(host: str, port: int, timeout_s: float) -> Any:
    """A client of torchrun's TCPStore that does not count as one of its workers."""
    from torch.distributed import TCPStore

    return TCPStore(
        host, port, world_size=None, is_master=False, timeout=timedelta(seconds=timeout_s), wait_for_workers=False
    )


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def conflict_message(host: str, port: int, owner: str, ours: str) -> str:
    return (
        f"{RDZV_PORT_FIELD}: the rendezvous at {host}:{port} belongs to another job "
        f"(rdzv id {owner}, ours {ours}): two jobs with the same {RDZV_PORT_FIELD} on one "
        f"network; give one of them a different {RDZV_PORT_FIELD}"
    )


def verify_rendezvous_id(
    host: str,
    port: int,
    rdzv_id: str,
    *,
    timeout: float,
    env_name: str,
    connect: Callable[[str, int, float], Any] = tcp_store_client,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> None:
    """Nodes > 0, after ``wait_reachable``: the store at the endpoint carries our rendezvous id.

    Polls in short steps (not one long blocking wait), so a SIGTERM meanwhile is handled at once.
    """
    deadline = monotonic() + timeout
    owner = None
    try:
        store = connect(host, port, min(timeout, 60.0))
        while True:
            if store.check([RDZV_ID_KEY]):
                owner = _text(store.get(RDZV_ID_KEY))
                break
            if monotonic() >= deadline:
                break
            sleep(0.5)
    except (RuntimeError, OSError) as error:  # torch's DistError family: no TCPStore, lost it
        detail = " ".join(str(error).split())[:200]
        raise PeerUnavailable(
            f"{env_name}: the rendezvous endpoint {host}:{port} accepts connections but does not "
            f"answer as torchrun's store ({detail}); is the endpoint node 0's?"
        ) from None
    if owner is None:
        raise PeerUnavailable(
            f"{env_name}: the rendezvous at {host}:{port} named no job within {timeout:.0f}s "
            f"(node 0's launcher sets {RDZV_ID_KEY} once its torchrun is up); is the endpoint "
            "node 0's?"
        )
    if owner != rdzv_id:
        raise RendezvousConflict(conflict_message(host, port, owner, rdzv_id))
    log.info("the rendezvous at %s:%d is this job's (rdzv id %s)", host, port, rdzv_id)


class Announcer:
    """Node 0, while torchrun runs: set RDZV_ID_KEY in the store on the rendezvous port to our
    rendezvous id unless it is already set; remember a foreign id found there."""

    def __init__(
        self,
        port: int,
        rdzv_id: str,
        *,
        host: str = "127.0.0.1",
        connect: Callable[[str, int, float], Any] = tcp_store_client,
        attempt_timeout_s: float = ANNOUNCE_ATTEMPT_TIMEOUT_S,
    ):
        self.host, self.port, self.rdzv_id = host, port, rdzv_id
        self.connect = connect
        self.attempt_timeout_s = attempt_timeout_s
        self.announced = False
        self.foreign_id: str | None = None

    def attempt(self, timeout_s: float) -> bool:
        """One try; True once settled (announced, or a foreign id found)."""
        try:
            store = self.connect(self.host, self.port, timeout_s)
            owner = _text(store.compare_set(RDZV_ID_KEY, "", self.rdzv_id))
        except (RuntimeError, OSError) as error:  # torchrun's store is not up (yet)
            log.debug("rendezvous id not announced yet: %s", error)
            return False
        if owner == self.rdzv_id:
            self.announced = True
            log.info("rendezvous id %s announced on port %d", self.rdzv_id, self.port)
        else:
            self.foreign_id = owner
            log.error("%s", self.conflict().message)
        return True

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set() and not self.attempt(self.attempt_timeout_s):
            stop.wait(1.0)

    def foreign_owner(self, timeout_s: float = 2.0) -> str | None:
        """After torchrun failed: whose store is on our port (one more look if not settled)?"""
        if self.foreign_id is None and not self.announced:
            self.attempt(timeout_s)
        return self.foreign_id

    def conflict(self) -> RendezvousConflict:
        return RendezvousConflict(
            f"{RDZV_PORT_FIELD}: rendezvous port {self.port} on this pod is another job's "
            f"rendezvous (rdzv id {self.foreign_id}, ours {self.rdzv_id}): two jobs with the same "
            f"{RDZV_PORT_FIELD} on one network; give one of them a different {RDZV_PORT_FIELD}"
        )


@contextmanager
def announce_rendezvous_id(port: int, rdzv_id: str, **kwargs: Any) -> Iterator[Announcer]:
    announcer = Announcer(port, rdzv_id, **kwargs)
    stop = threading.Event()
    thread = threading.Thread(target=announcer.run, args=(stop,), name="rdzv-id-announcer", daemon=True)
    thread.start()
    try:
        yield announcer
    finally:
        stop.set()
        thread.join(timeout=ANNOUNCE_ATTEMPT_TIMEOUT_S + 5)
