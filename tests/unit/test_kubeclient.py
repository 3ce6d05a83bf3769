"""API calls never wait forever: a server that accepts and never answers makes the call fail."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import kubernetes
import pytest
import urllib3

from sft_operator.kubeclient import BoundedApiClient, load_api_client


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def _client(host: str, timeout: object) -> BoundedApiClient:
    configuration = kubernetes.client.Configuration()
    configuration.host = host
    configuration.retries = False
    client = BoundedApiClient(configuration)
    client.request_timeout = timeout
    return client


def test_a_call_without_timeout_gets_the_default(silent_server: str) -> None:
    core = kubernetes.client.CoreV1Api(_client(silent_server, (1.0, 0.5)))
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        core.read_namespaced_config_map("any", "default")
    assert time.monotonic() - started < 5


def test_a_call_naming_its_timeout_keeps_it(silent_server: str) -> None:
    core = kubernetes.client.CoreV1Api(_client(silent_server, (1.0, 30.0)))
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        core.read_namespaced_config_map("any", "default", _request_timeout=(1.0, 0.3))
    assert time.monotonic() - started < 5


def test_load_api_client_reads_the_kubeconfig(tmp_path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443', insecure-skip-tls-verify: true}}]\n"
        "users: [{name: u, user: {token: t0ken}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n")
    client = load_api_client(kubeconfig)
    assert isinstance(client, BoundedApiClient)
    assert client.configuration.host == "https://127.0.0.1:6443"
    cfg = client.configuration
    # Newer clients keep the token as "BearerToken", older ones as "authorization".
    assert (cfg.get_api_key_with_prefix("BearerToken")
            or cfg.get_api_key_with_prefix("authorization")) == "Bearer t0ken"
