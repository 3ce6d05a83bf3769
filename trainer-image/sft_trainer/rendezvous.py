"""Wait until node 0's rendezvous endpoint accepts connections, with a clear failure."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from .errors import PeerUnavailable


def wait_reachable(host: str, port: int, *, timeout: float, env_name: str,
                   sleep: Callable[[float], None] = time.sleep,
                   monotonic: Callable[[], float] = time.monotonic) -> None:
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
                f"(last error: {last_error}); is node 0 running?")
        sleep(1.0)
