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
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    client = load_api_client(kubeconfig)
    assert isinstance(client, BoundedApiClient)
    assert client.configuration.host == "https://127.0.0.1:6443"
    cfg = client.configuration
    # Newer clients keep the token as "BearerToken", older ones as "authorization".
    assert (
        cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    ) == "Bearer t0ken"


def test_in_cluster_client_follows_the_rotated_token(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reporter's token is a projected one that expires (pod_security.TOKEN_EXPIRATION_SECONDS);
    the kubelet rewrites the file at 80 % of its life. The in-cluster config re-reads the file at
    most a minute after the last read, so every request after that carries the new token."""
    import datetime as real_datetime
    from types import SimpleNamespace

    from kubernetes.config import incluster_config

    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("first")
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    now = [real_datetime.datetime(2026, 1, 1)]

    class Clock(real_datetime.datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def]  # a stand-in clock, as loose as the caller
            return now[0]

    monkeypatch.setattr(
        incluster_config, "datetime", SimpleNamespace(datetime=Clock, timedelta=real_datetime.timedelta)
    )
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(ca))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    client = load_api_client()

    def sent_authorization() -> str:
        # The headers every generated call and kube.Kube._write send (param_serialize).
        _, url, headers, _, _ = client.param_serialize("GET", "/api", auth_settings=["BearerToken"])
        assert url == "https://10.0.0.1:443/api"
        return headers["authorization"]

    assert sent_authorization() == "bearer first"
    token.write_text("second")  # the kubelet's rotation
    now[0] += real_datetime.timedelta(seconds=30)
    assert sent_authorization() == "bearer first"  # read at most once a minute
    now[0] += real_datetime.timedelta(seconds=31)
    assert sent_authorization() == "bearer second"
