"""Event messages that the API server accepts.

An Event's message is limited to 1024 bytes, not characters (the server refuses a longer one
with 422, and the Event is lost). kopf shortens messages by characters, which is not enough once
they hold multi-byte text (a progress bar's block characters are 3 bytes each), so every message
is fitted here first: the head and the tail kept, whole characters only.
"""

from __future__ import annotations

MAX_MESSAGE_BYTES = 1024
ELLIPSIS = " … "


def _head(text: str, size: int) -> str:
    return text.encode("utf-8")[:size].decode("utf-8", errors="ignore")


def _tail(text: str, size: int) -> str:
    data = text.encode("utf-8")
    return data[len(data) - size :].decode("utf-8", errors="ignore") if size > 0 else ""


def fit_message(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """``message`` if it fits in ``limit`` UTF-8 bytes; else its head and tail around an ellipsis
    (the tail of a failure says most, the head says what failed)."""
    if len(message.encode("utf-8")) <= limit:
        return message
    room = limit - len(ELLIPSIS.encode("utf-8"))
    head = _head(message, room // 2)
    tail = _tail(message, room - len(head.encode("utf-8")))
    return f"{head}{ELLIPSIS}{tail}"
