"""Ready means working: the operator is Ready only while it can list and watch SFTJobs.

kopf's liveness endpoint answers as long as kopf's event loop runs, also while every request to
the API server fails (an operator pod showed Ready for minutes with `ClientConnectorError` on
every request and no job got a status). Here a thread lists and watches SFTJobs (each watched
namespace, or cluster-wide) every few seconds with the operator's credentials, as kopf's
watchers do; ``/readyz`` answers 200 after a check that worked and 503 with the reason after one
that did not; ``sft_operator_api_reachable`` says the same; the log gets one line per change of
state, not one per failed request. Liveness stays kopf's: restarting an operator does not bring
an API server back, and a pod restarted through an outage would only sit in CrashLoopBackOff,
up to 5 minutes from working again once the API server is back.

A standby (leader election) is Ready too when it can reach the API: it serves the webhook. With
the webhook on (`--webhook-port`), Ready also needs its server to accept connections: the
webhook's Service sends admission requests only to Ready pods, and a rolling update stops an old
pod only once a new one is Ready.
"""

from __future__ import annotations

import http.server
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from sft_core import contract

log = logging.getLogger("sft_operator")

CHECK_INTERVAL_S = 5.0
# A healthy API server answers a one-item listing in milliseconds; a watch is held WATCH_S.
REQUEST_TIMEOUT_S = 5.0
WATCH_S = 1
_OBJECT_ADDRESS = re.compile(r"<([^<>]*?)(?: object)? at 0x[0-9a-f]+>")


def describe_failure(exc: BaseException) -> str:
    """One line on why a check failed, the same for the same cause (no object addresses)."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        message = ""
        try:
            message = json.loads(exc.body or "{}").get("message", "")
        except (ValueError, AttributeError):
            pass
        return f"HTTP {exc.status} {exc.reason or ''}".strip() + (f": {message[:200]}" if message else "")
    cause = getattr(exc, "reason", None)  # urllib3's MaxRetryError: the connection error inside
    text = str(cause if isinstance(cause, BaseException) else exc) or type(exc).__name__
    stable = _OBJECT_ADDRESS.sub(r"<\1>", text)
    return f"{type(cause if isinstance(cause, BaseException) else exc).__name__}: {stable[:300]}"


class ApiReachability:
    """The state the checks found: ready or not, and why not. ``record`` logs a change of state
    once (the reason of the first failed check) and sets the gauge; repeated failures log nothing."""

    def __init__(self, gauge: Callable[[float], None] | None = None, clock: Callable[[], float] = time.monotonic):
        self._lock = threading.Lock()
        self._ready: bool | None = None  # None: not checked yet (not Ready)
        self._reason = "not checked yet"
        self._since = clock()
        self._gauge = gauge
        self._clock = clock

    @property
    def ready(self) -> bool:
        return bool(self._ready)

    @property
    def reason(self) -> str:
        return self._reason

    def record(self, api_problem: str | None, other_problem: str | None = None) -> bool:
        """The outcome of one check: ``api_problem`` None when it listed and watched SFTJobs (the
        gauge), ``other_problem`` None when the rest is ready too (the webhook listens). True when
        the state changed (and was logged)."""
        with self._lock:
            problem = f"cannot list and watch SFTJobs: {api_problem}" if api_problem else other_problem
            ready = problem is None
            changed = ready != self._ready
            if changed:
                now = self._clock()
                if ready and self._ready is False:
                    log.info(
                        "readiness: Ready again after %.0f s (SFTJobs can be listed and watched)", now - self._since
                    )
                elif ready:
                    log.info("readiness: Ready (SFTJobs can be listed and watched)")
                else:
                    log.warning(
                        "readiness: not Ready: %s (said once; kopf's request retries are not logged meanwhile)", problem
                    )
                self._since = now
            self._ready = ready
            self._reason = problem or "ok"
            if self._gauge is not None:
                self._gauge(0.0 if api_problem else 1.0)
            return changed


def check_listening(port: int, host: str = "127.0.0.1", timeout_s: float = 2.0) -> str | None:
    """None when something accepts TCP connections on ``port`` (the webhook's server), else why not."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        return f"the webhook does not listen on port {port} yet ({exc.strerror or exc})"
    return None


class QuietWhileUnreachable(logging.Filter):
    """While a check has found the API unreachable (and said so once), drop the lines that repeat
    it on every request: kopf's request retries ("Request attempt #N/9 failed ...", one per
    watched kind per backoff step) and urllib3's connection retries. Everything else passes,
    handler failures included; and all of it again once a check works."""

    REPEATERS = ("kopf", "urllib3.connectionpool")

    def __init__(self, state: ApiReachability):
        super().__init__()
        self.state = state

    def filter(self, record: logging.LogRecord) -> bool:
        if self.state.ready or self.state.reason == "not checked yet":
            return True
        return not (
            record.name.startswith(self.REPEATERS)
            and (record.name.startswith("urllib3") or "Request attempt" in str(record.msg))
        )


def sftjobs_path(namespace: str | None) -> str:
    where = f"/namespaces/{namespace}" if namespace else ""
    return f"/apis/{contract.GROUP}/{contract.VERSION}{where}/{contract.PLURAL}"


def check_sftjobs(api_client: Any, namespaces: Sequence[str]) -> str | None:
    """List (one item) and watch (WATCH_S) SFTJobs in each namespace, or cluster-wide: None when
    every call worked, else why not (the first failure)."""
    targets: Sequence[str | None] = namespaces or [None]  # [None]: cluster-wide
    for namespace in targets:
        path = sftjobs_path(namespace)
        doing = "listing"
        try:
            listed = _get(api_client, path, {"limit": "1"})
            version = json.loads(listed).get("metadata", {}).get("resourceVersion", "")
            doing = "watching"
            streamed = _get(
                api_client,
                path,
                {
                    "watch": "1",
                    "resourceVersion": version,
                    "timeoutSeconds": str(WATCH_S),
                    "allowWatchBookmarks": "true",
                },
            )
        except Exception as exc:  # noqa: BLE001 - every failure is a reason not to be Ready
            return f"{doing} {path}: {describe_failure(exc)}"
        for line in streamed.splitlines():
            if b'"type":"ERROR"' in line.replace(b" ", b""):
                status = json.loads(line).get("object", {})
                return f"watching {path}: {status.get('code')} {status.get('message', '')[:200]}"
    return None


def _get(api_client: Any, path: str, query: dict[str, str]) -> bytes:
    from kubernetes.client.exceptions import ApiException

    request = api_client.param_serialize(
        method="GET",
        resource_path=path,
        query_params=list(query.items()),
        auth_settings=["BearerToken"],
        header_params={"Accept": "application/json"},
    )
    response = api_client.call_api(*request, _request_timeout=REQUEST_TIMEOUT_S + WATCH_S)
    data: bytes = response.read()
    if not 200 <= response.status <= 299:
        exc = ApiException(status=response.status, reason=response.reason)
        exc.body = data.decode("utf-8", "replace")  # str, as the client's own ApiException(http_resp=...)
        raise exc
    return data


class ReadinessChecker:
    """Checks every ``interval_s`` in a daemon thread (its own client: never queued behind the
    handlers') and serves the state on ``url``'s path."""

    def __init__(
        self,
        api_client: Any,
        namespaces: Sequence[str],
        state: ApiReachability,
        interval_s: float = CHECK_INTERVAL_S,
        webhook_port: int = 0,
    ):
        self.client = api_client
        self.namespaces = list(namespaces)
        self.webhook_port = webhook_port
        self.state = state
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._server: http.server.ThreadingHTTPServer | None = None

    def start(self, url: str, quiet: Sequence[logging.Handler] = ()) -> ReadinessChecker:
        """Serve ``url`` and check; ``quiet``: log handlers that drop the repeats while down."""
        for handler in quiet:
            handler.addFilter(QuietWhileUnreachable(self.state))
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.port:
            raise ValueError(f"--readiness {url}: expected http://HOST:PORT/PATH")
        self._server = serve(parts.hostname or "0.0.0.0", parts.port, parts.path or "/readyz", self.state)
        threading.Thread(target=self._run, name="readiness-check", daemon=True).start()
        log.info("readiness: serving %s (SFTJobs listed and watched every %.0f s)", url, self.interval_s)
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            self.state.record(
                check_sftjobs(self.client, self.namespaces),
                check_listening(self.webhook_port) if self.webhook_port else None,
            )
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - began)))

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()


def serve(host: str, port: int, path: str, state: ApiReachability) -> http.server.ThreadingHTTPServer:
    """GET ``path``: 200 "ok" when Ready, 503 and the reason when not."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if urllib.parse.urlsplit(self.path).path != path:
                self.send_error(404)
                return
            body = (f"{'ok' if state.ready else 'not ready: ' + state.reason}\n").encode()
            self.send_response(200 if state.ready else 503)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # one line per probe is noise
            pass

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="readiness-http", daemon=True).start()
    return server
