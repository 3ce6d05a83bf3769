"""Pieces of the local stack, dev and test only: ``wait_until``, ``install_crd``, ``free_port``,
``OperatorProcess`` (the operator as a local process, for the integration tier and the benchmarks
that have no node) and ``StackError``. The whole user path on a real node is devtools.realstack.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")

OPERATOR_START_TIMEOUT_S = 60.0


class StackError(RuntimeError):
    """One clear line on what failed in the local stack."""


def wait_until(what: str, probe: Callable[[], T | None], timeout_s: float = 30.0, interval_s: float = 0.1) -> T:
    """Poll ``probe`` until it returns something truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")


def install_crd(api_client: Any, timeout_s: float = 30.0) -> str:
    """Create or replace the SFTJob CRD (generated from the models) and wait until Established."""
    import kubernetes
    from kubernetes.client.exceptions import ApiException

    from devtools.crd import CRD_NAME, build_crd

    ext = kubernetes.client.ApiextensionsV1Api(api_client)
    crd = build_crd()
    try:
        ext.create_custom_resource_definition(crd)
    except ApiException as exc:
        if exc.status != 409:
            raise
        existing = ext.read_custom_resource_definition(CRD_NAME)
        crd["metadata"]["resourceVersion"] = existing.metadata.resource_version
        ext.replace_custom_resource_definition(CRD_NAME, crd)

    def established() -> bool:
        conditions = ext.read_custom_resource_definition(CRD_NAME).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_until("the SFTJob CRD to be established", established, timeout_s)
    return CRD_NAME


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OperatorProcess:
    """`sft-operator run --kubeconfig ... [--namespace ...]` in its own process group, so a test
    can kill it (SIGKILL: no clean-up) and start it again."""

    def __init__(
        self, kubeconfig: Path | str, namespaces: list[str], log_file: Path | str, extra_args: list[str] | None = None
    ):
        self.kubeconfig = Path(kubeconfig)
        self.namespaces = list(namespaces)
        self.log_file = Path(log_file)
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, timeout_s: float = OPERATOR_START_TIMEOUT_S) -> "OperatorProcess":
        self.port = free_port()
        args = [sys.executable, "-m", "sft_operator", "run", "--kubeconfig", str(self.kubeconfig)]
        for ns in self.namespaces:
            args += ["--namespace", ns]
        args += ["--liveness", f"http://127.0.0.1:{self.port}/healthz", *self.extra_args]
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StackError(f"operator exited with {self.proc.returncode}:\n{self.logs()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        raise StackError(f"operator not live after {timeout_s:.0f}s:\n{self.logs()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logs(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""
