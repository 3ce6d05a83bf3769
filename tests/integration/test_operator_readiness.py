"""Ready means working, on the real API server: the operator reaches it through a TCP proxy the
test cuts (an API outage as the operator sees it: connections refused, open ones dropped); its
/readyz goes 503 within 30 s with the reason in ONE log line, and 200 again once the proxy is
back, with one more."""

from __future__ import annotations

import re
import select
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools import stack

pytestmark = pytest.mark.integration
NOT_READY_BOUND_S = 30.0
DOWN_LINE = "readiness: not Ready: cannot list and watch SFTJobs"
UP_AGAIN_LINE = "readiness: Ready again after"


class TcpProxy:
    """127.0.0.1:port -> target, byte for byte (TLS passes through); stop() refuses new
    connections and drops open ones; start() again serves on the same port."""

    def __init__(self, target: tuple[str, int], port: int = 0):
        self.target, self.port = target, port
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    (b if src is a else a).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            except OSError:
                pass


def readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def test_readiness_fails_within_30_s_of_an_api_outage_with_one_log_line(
    control_plane: Any,
    crd: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    host, _, port = control_plane.server.removeprefix("https://").rpartition(":")
    proxy = TcpProxy((host, int(port))).start()
    kubeconfig = yaml.safe_load(Path(control_plane.kubeconfig).read_text())
    kubeconfig["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    ready_port = stack.free_port()
    operator = stack.OperatorProcess(
        tmp_path / "kubeconfig",
        [namespace],
        tmp_path / "operator.log",
        ["--readiness", f"http://127.0.0.1:{ready_port}/readyz"],
    )
    try:
        operator.start()
        stack.wait_until("Ready", lambda: readyz(ready_port)[0] == 200, timeout_s=30)

        proxy.stop()
        cut_at = time.monotonic()
        status, body = stack.wait_until(
            "not Ready", lambda: (a := readyz(ready_port))[0] == 503 and a, timeout_s=NOT_READY_BOUND_S, interval_s=0.2
        )
        took = time.monotonic() - cut_at
        print(f"not Ready {took:.1f} s after the outage began: {body.strip()}")
        assert took <= NOT_READY_BOUND_S
        # Cut while listing or in the middle of the check's watch: either is said.
        assert re.match(
            rf"not ready: cannot list and watch SFTJobs: (listing|watching) "
            rf"/apis/finetune.dev/v1alpha1/namespaces/{namespace}/sftjobs: \w+",
            body,
        ), body
        time.sleep(12)  # more failed checks (every 5 s): none logs again
        log = operator.logs()
        assert [line for line in log.splitlines() if DOWN_LINE in line] and len(
            [line for line in log.splitlines() if DOWN_LINE in line]
        ) == 1, log[-3000:]
        assert readyz(ready_port)[0] == 503 and operator.alive()  # not Ready, and not restarted

        proxy.start()  # the same port: the API server is back
        stack.wait_until("Ready again", lambda: readyz(ready_port)[0] == 200, timeout_s=30)
        log = operator.logs()
        assert len([line for line in log.splitlines() if DOWN_LINE in line]) == 1
        assert len([line for line in log.splitlines() if UP_AGAIN_LINE in line]) == 1
        outage = log[log.index(DOWN_LINE) : log.index(UP_AGAIN_LINE)]
        repeats = [line for line in outage.splitlines() if "Request attempt" in line or "urllib3" in line]
        assert repeats == [], repeats[:5]  # not one line per failed request
        print(f"log lines while not Ready: {len(outage.splitlines()) - 1}")
    finally:
        operator.stop()
        proxy.stop()
        print(f"--- operator log ---\n{operator.logs()[-4000:]}")
