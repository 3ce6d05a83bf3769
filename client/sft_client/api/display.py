"""Showing a job's progress while waiting: a rich progress bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from sft_client.api.progress_text import progress_facts, progress_line
from sft_client.api.results import JobView, view_job
from sft_models.models import Phase


class ProgressDisplay:
    """Context manager; call ``update(job)`` with each new version of the SFTJob object.

    ``rich_output`` None: a progress bar when ``stream`` is a terminal, plain lines otherwise
    (one per change, so logs stay readable).
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        rich_output: bool | None = None,
        enabled: bool = True,
        width: int | None = None,
    ):
        self.stream = stream if stream is not None else sys.stderr
        self.width = width  # None: the terminal's
        self.enabled = enabled
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.rich_output = isatty() if rich_output is None else rich_output
        self._last_line: str | None = None
        self._progress: Any = None
        self._task: Any = None
        self._detail_column: Any = None

    def __enter__(self) -> ProgressDisplay:
        if self.enabled and self.rich_output:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
            )
            from rich.table import Column

            self._detail_column = Column(no_wrap=True, overflow="ellipsis")
            self._progress = Progress(
                TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True)),
                BarColumn(bar_width=24),
                TaskProgressColumn(),
                # What does not fit the terminal's width is cut at the end, never wrapped.
                TextColumn("{task.fields[detail]}", table_column=self._detail_column),
                console=Console(file=self.stream, width=self.width),
                transient=False,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def note(self, text: str) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(text)
        else:
            print(text, file=self.stream, flush=True)

    def update(self, job: dict[str, Any]) -> JobView:
        view = view_job(job)
        if not self.enabled:
            return view
        if self._progress is None:
            line = progress_line(view)
            if line != self._last_line:
                print(line, file=self.stream, flush=True)
                self._last_line = line
            return view
        description = f"{view.name} {view.phase}"
        # Room left after the name, the bar (24), the percentage and the gaps between columns.
        self._detail_column.max_width = max(10, self._progress.console.width - len(description) - 24 - 12)
        total = 100.0 if view.percent is not None else None
        completed = view.percent or 0.0
        detail = "  ".join(progress_facts(view, percent=False))
        if view.phase == Phase.SUCCEEDED.value:
            total, completed = 100.0, 100.0
        if self._task is None:
            self._task = self._progress.add_task(description, total=total, completed=completed, detail=detail)
        else:
            self._progress.update(self._task, description=description, total=total, completed=completed, detail=detail)
        return view


def format_bytes(size: float) -> str:
    """1536 -> '1.5 KiB' (binary units, as the claim sizes are written)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover - the loop returns


class ByteProgress:
    """Bytes moved (an upload, a download, hashing): a rich bar with size, speed and time left on
    a terminal; otherwise one line when it starts and one when it ends (logs stay readable).

    Context manager; call ``advance(n)`` per block."""

    def __init__(
        self,
        description: str,
        total: int | None,
        stream: TextIO | None = None,
        rich_output: bool | None = None,
        enabled: bool = True,
    ):
        self.description = description
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.rich_output = isatty() if rich_output is None else rich_output
        self.done = 0
        self._progress: Any = None
        self._task: Any = None
        self._started = 0.0

    def __enter__(self) -> ByteProgress:
        import time

        self._started = time.monotonic()
        if not self.enabled:
            return self
        if self.rich_output:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=24),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=self.total)
        else:
            size = "" if self.total is None else f" ({format_bytes(self.total)})"
            print(f"{self.description}{size} ...", file=self.stream, flush=True)
        return self

    def advance(self, count: int) -> None:
        self.done += count
        if self._progress is not None:
            self._progress.update(self._task, advance=count)

    def __exit__(self, exc_type: object, *exc: object) -> None:
        import time

        if self._progress is not None:
            self._progress.__exit__(exc_type, *exc)
            self._progress = None
        elif self.enabled and exc_type is None:
            seconds = max(time.monotonic() - self._started, 1e-6)
            print(
                f"{self.description}: {format_bytes(self.done)} in {seconds:.1f}s "
                f"({format_bytes(self.done / seconds)}/s)",
                file=self.stream,
                flush=True,
            )
