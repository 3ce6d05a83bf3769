"""The gates of leader election: while this replica does not hold the Lease (leadership.py), kopf's
watch streams stay paused (its own pause toggles) and the operator's API client refuses every write
(a question such as a SubjectAccessReview still passes)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from sft_operator.leadership import LeaderElector, NotLeading

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PAUSE_TOGGLE = "not the leader (leader election)"
REVIEW_GROUPS = ("authorization.k8s.io", "authentication.k8s.io")

# The elector of this process (leadership.start sets it); None without leader election.
elector: LeaderElector | None = None


def leading() -> bool:
    """Whether this process may act: always, without leader election."""
    return elector is None or elector.leading


def gate_writes(api_client: Any, by: LeaderElector) -> Any:
    """Refuse every write of ``api_client`` while ``elector`` does not lead (a handler still
    running when leadership goes fails at its next write instead of racing the new leader)."""
    from sft_operator.metrics import _http_method

    original = api_client.call_api

    def call_api(*args: Any, **kwargs: Any) -> Any:
        method = _http_method(args, kwargs)
        if method not in READ_METHODS and not by.leading and not _is_review(args, kwargs):
            raise NotLeading(
                f"{method} refused: this operator ({by.identity}) does not hold Lease {by.namespace}/{by.name}"
            )
        return original(*args, **kwargs)

    api_client.call_api = call_api
    return api_client


def _is_review(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """A SubjectAccessReview or TokenReview: a question (the webhook's, on every replica), not
    a write, though POSTed."""
    url = next(
        (a for a in (*args[:2], kwargs.get("url"), kwargs.get("resource_path")) if isinstance(a, str) and "/" in a), ""
    )
    return any(f"/apis/{group}/" in url for group in REVIEW_GROUPS)


class KopfPause:
    """kopf's watch streams paused while this replica does not lead: a toggle of our own in the
    set kopf pauses its streams by (its peering's), added when kopf's orchestrator starts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._toggle: Any = None
        self._paused = True

    def set_paused(self, paused: bool) -> None:
        with self._lock:
            self._paused = paused
            if self._loop is not None and self._toggle is not None:
                self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._toggle.turn_to(paused)))

    async def attach(self, operator_paused: Any) -> None:
        with self._lock:
            self._toggle = await operator_paused.make_toggle(self._paused, name=PAUSE_TOGGLE)
            self._loop = asyncio.get_running_loop()
            paused = self._paused
        await self._toggle.turn_to(paused)  # a change while the toggle was being made

    def install(self) -> None:
        """Wrap kopf's orchestrator (which starts every watch stream, given the pause set):
        our toggle joins the set before the first stream starts. kopf is pinned; a unit test
        checks the call this relies on."""
        from kopf._core.reactor import orchestration

        original = getattr(orchestration.orchestrator, "__wrapped_by_sft__", orchestration.orchestrator)
        pause = self

        async def orchestrator(*, operator_paused: Any, **kwargs: Any) -> None:
            await pause.attach(operator_paused)
            await original(operator_paused=operator_paused, **kwargs)

        orchestrator.__wrapped_by_sft__ = original  # type: ignore[attr-defined]  # the marker read back above
        orchestration.orchestrator = orchestrator
