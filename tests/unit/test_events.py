"""events.fit_message: Event messages within the API server's 1024-byte limit."""

from __future__ import annotations

from sft_core.events import ELLIPSIS, MAX_MESSAGE_BYTES, fit_message


def test_short_messages_are_kept() -> None:
    assert fit_message("pod j-0: Error (exit code 1)") == "pod j-0: Error (exit code 1)"
    exact = "é" * (MAX_MESSAGE_BYTES // 2)  # 1024 bytes, 512 characters
    assert fit_message(exact) == exact


def test_multi_byte_messages_are_cut_by_bytes_on_character_boundaries() -> None:
    """A progress bar's block characters are 3 bytes: 700 of them are 700 characters (kopf's
    character limit lets them through) but 2100 bytes, which the API server refuses."""
    bar = "head " + "█" * 700 + " tail"
    fitted = fit_message(bar)
    assert len(fitted.encode("utf-8")) <= MAX_MESSAGE_BYTES
    assert fitted.startswith("head ███") and fitted.endswith("███ tail") and ELLIPSIS in fitted
    head, tail = fitted.split(ELLIPSIS)
    assert set(head[5:]) == {"█"} and set(tail[:-5]) == {"█"}  # no broken character either side
    # Exact: 1024 - 5 (ellipsis) = 1019 bytes of room; head 509 bytes = "head " + 168 blocks (504);
    # tail 1019 - 509 = 510 bytes = 168 blocks (504) + " tail" (5), one stray byte dropped.
    assert fitted == "head " + "█" * 168 + ELLIPSIS + "█" * 168 + " tail"


def test_ascii_messages_keep_head_and_tail() -> None:
    message = "A" * 600 + "B" * 600
    fitted = fit_message(message)
    assert len(fitted.encode("utf-8")) == MAX_MESSAGE_BYTES
    assert fitted == "A" * 509 + ELLIPSIS + "B" * 510
