"""Ready means working (readiness.py): the state tracking, its one log line per change, the gauge,
the check's reasons and the /readyz answers."""

from __future__ import annotations

import json
import logging
import socket
import urllib.error
import urllib.request
from typing import Any

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from sft_operator import readiness
from sft_operator.readiness import ApiReachability, check_sftjobs, describe_failure

REFUSED = "listing /apis/finetune.dev/v1alpha1/sftjobs: NewConnectionError: Connection refused"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_log_line_per_change_of_state_and_the_gauge_each_check(caplog: pytest.LogCaptureFixture) -> None:
    gauge: list[float] = []
    clock = Clock()
    state = ApiReachability(gauge.append, clock)
    assert (state.ready, state.reason) == (False, "not checked yet")
    caplog.set_level(logging.INFO, logger="sft_operator")
    outcomes = [None, None, REFUSED, REFUSED, REFUSED, "listing x: HTTP 403 Forbidden", None, None]
    changes = []
    for problem in outcomes:
        clock.now += 5
        changes.append(state.record(problem))
    assert changes == [True, False, True, False, False, False, True, False]
    assert gauge == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "readiness: Ready (SFTJobs can be listed and watched)"),
        (
            "WARNING",
            f"readiness: not Ready: cannot list and watch SFTJobs: {REFUSED} (said once; kopf's request "
            "retries are not logged meanwhile)",
        ),
        ("INFO", "readiness: Ready again after 20 s (SFTJobs can be listed and watched)"),
    ]
    assert (state.ready, state.reason) == (True, "ok")


def test_a_failing_first_check_is_said_once() -> None:
    state = ApiReachability()
    assert state.record("listing x: timeout") and not state.record("listing x: timeout")
    assert (state.ready, state.reason) == (False, "cannot list and watch SFTJobs: listing x: timeout")


def test_the_webhook_not_listening_is_not_ready_but_the_api_is_reachable() -> None:
    gauge: list[float] = []
    state = ApiReachability(gauge.append)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: refused
        problem = readiness.check_listening(port)
    assert problem == f"the webhook does not listen on port {port} yet (Connection refused)"
    state.record(None, problem)
    assert (state.ready, state.reason, gauge) == (False, problem, [1.0])
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert readiness.check_listening(server.getsockname()[1]) is None


def test_describe_failure_has_no_object_addresses() -> None:
    connection = urllib3.connection.HTTPSConnection("10.0.0.1", 443)
    refused = urllib3.exceptions.NewConnectionError(
        connection, "Failed to establish a new connection: [Errno 111] Connection refused"
    )
    wrapped = urllib3.exceptions.MaxRetryError(None, "/apis/x", refused)
    assert describe_failure(wrapped) == (
        "NewConnectionError: HTTPSConnection(host='10.0.0.1', port=443): "
        "Failed to establish a new connection: [Errno 111] Connection refused"
    )
    # Older urllib3 names the connection by its address: a new text per failure, unless dropped.
    assert describe_failure(OSError("<urllib3.connection.HTTPSConnection object at 0x7f3a2c>: Failed to connect")) == (
        "OSError: <urllib3.connection.HTTPSConnection>: Failed to connect"
    )
    timeout = "(<HTTPSConnection(host='10.0.0.1', port=443) at 0x7fe60385da10>, 'Connection to 10.0.0.1 timed out.')"
    assert describe_failure(TimeoutError(timeout)) == (
        "TimeoutError: (<HTTPSConnection(host='10.0.0.1', port=443)>, 'Connection to 10.0.0.1 timed out.')"
    )
    forbidden = ApiException(status=403, reason="Forbidden")
    forbidden.body = json.dumps({"message": 'sftjobs.finetune.dev is forbidden: User "x" cannot list'})
    assert describe_failure(forbidden) == 'HTTP 403 Forbidden: sftjobs.finetune.dev is forbidden: User "x" cannot list'


class Answer:
    def __init__(self, status: int, body: bytes):
        self.status, self.reason, self.data = status, "r", body

    def read(self) -> bytes:
        return self.data

    def getheaders(self) -> dict[str, str]:
        return {}


class Transport:
    """The two ApiClient methods the check uses; answers by (path, watch?)."""

    def __init__(self, answers: dict[tuple[str, bool], Any]):
        self.answers, self.calls = answers, []

    def param_serialize(
        self, method: str, resource_path: str, query_params: list[tuple[str, str]], **_: Any
    ) -> tuple[Any, ...]:
        return (method, resource_path, dict(query_params))

    def call_api(self, method: str, path: str, query: dict[str, str], _request_timeout: float) -> Answer:
        self.calls.append((path, query))
        answer = self.answers[(path, "watch" in query)]
        if isinstance(answer, BaseException):
            raise answer
        return answer


NS_PATH = "/apis/finetune.dev/v1alpha1/namespaces/{}/sftjobs"


def test_check_lists_then_watches_each_namespace_from_the_listed_version() -> None:
    listed = Answer(200, json.dumps({"metadata": {"resourceVersion": "42"}, "items": []}).encode())
    bookmark = Answer(200, b'{"type":"BOOKMARK","object":{}}\n')
    transport = Transport(
        {(NS_PATH.format(ns), watch): listed if not watch else bookmark for ns in ("a", "b") for watch in (False, True)}
    )
    assert check_sftjobs(transport, ["a", "b"]) is None
    assert transport.calls == [
        (NS_PATH.format("a"), {"limit": "1"}),
        (
            NS_PATH.format("a"),
            {"watch": "1", "resourceVersion": "42", "timeoutSeconds": "1", "allowWatchBookmarks": "true"},
        ),
        (NS_PATH.format("b"), {"limit": "1"}),
        (
            NS_PATH.format("b"),
            {"watch": "1", "resourceVersion": "42", "timeoutSeconds": "1", "allowWatchBookmarks": "true"},
        ),
    ]


def test_check_says_which_call_failed_and_why() -> None:
    path = NS_PATH.format("a")
    listed = Answer(200, b'{"metadata": {"resourceVersion": "7"}}')
    assert check_sftjobs(Transport({(path, False): Answer(403, b"{}")}), ["a"]) == f"listing {path}: HTTP 403 r"
    gone = Answer(200, b'{"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}}\n')
    assert check_sftjobs(Transport({(path, False): listed, (path, True): gone}), ["a"]) == (
        f"watching {path}: 410 too old resource version"
    )
    assert check_sftjobs(Transport({(path, False): listed, (path, True): OSError("reset")}), ["a"]) == (
        f"watching {path}: OSError: reset"
    )
    cluster = "/apis/finetune.dev/v1alpha1/sftjobs"
    assert check_sftjobs(Transport({(cluster, False): TimeoutError("timed out")}), []) == (
        f"listing {cluster}: TimeoutError: timed out"
    )


def test_readyz_answers_the_state() -> None:
    state = ApiReachability()
    server = readiness.serve("127.0.0.1", 0, "/readyz", state)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:

        def get(path: str) -> tuple[int, str]:
            try:
                with urllib.request.urlopen(url + path, timeout=5) as resp:
                    return resp.status, resp.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        assert get("/readyz") == (503, "not ready: not checked yet\n")
        state.record(None)
        assert get("/readyz") == (200, "ok\n")
        state.record("listing x: HTTP 401 Unauthorized")
        assert get("/readyz") == (503, "not ready: cannot list and watch SFTJobs: listing x: HTTP 401 Unauthorized\n")
        assert get("/healthz")[0] == 404
    finally:
        server.shutdown()


def test_request_retries_are_not_logged_while_unreachable_the_rest_is() -> None:
    state = ApiReachability()
    quiet = readiness.QuietWhileUnreachable(state)

    def record(name: str, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, None, None)

    retry = record("kopf._cogs.clients.watching", "Request attempt #3/9 failed; will retry: GET https://x -> Error")
    pool = record("urllib3.connectionpool", "Retrying (Retry(total=2)) after connection broken by 'x'")
    handler = record("kopf.objects", "Handler 'reconcile' failed with an exception. Will retry.")
    assert [quiet.filter(r) for r in (retry, pool, handler)] == [True, True, True]  # not checked yet
    state.record("listing x: refused")
    assert [quiet.filter(r) for r in (retry, pool, handler)] == [False, False, True]
    state.record(None)
    assert [quiet.filter(r) for r in (retry, pool, handler)] == [True, True, True]
