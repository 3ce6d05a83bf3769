"""A job's loss curve from its status (``status.progress.lossHistory``): a PNG with matplotlib
(the ``plot`` extra), or a small text chart for a terminal (pure, no dependency)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sft_client.api.results import parse_status
from sft_core.progress import LossPoint

LOSS_MARK, VALIDATION_MARK, BOTH_MARK = "*", "o", "@"


class PlotUnavailableError(RuntimeError):
    """A PNG was asked for and matplotlib is not installed."""


def loss_points(status: dict[str, Any] | None) -> list[LossPoint]:
    """The loss history a job's status carries (empty before the first step is published)."""
    progress = parse_status(status).progress
    return list(progress.loss_history or []) if progress is not None else []


def _label(value: float) -> str:
    return f"{value:.4g}"


def text_chart(points: Sequence[LossPoint], *, width: int = 60, height: int = 12, title: str | None = None) -> str:
    """The loss (``*``) and validation loss (``o``; ``@`` where both fall) against samples seen,
    in a ``width`` x ``height`` grid with the y range on the left and the x range below."""
    series = [(p.samples, p.loss, p.val_loss) for p in points]
    values = [v for _, loss, val in series for v in (loss, val) if v is not None and math.isfinite(v)]
    lines = [title] if title else []
    if not values:
        return "\n".join([*lines, "no loss history yet"])
    low, high = min(values), max(values)
    first, last = series[0][0], series[-1][0]
    grid = [[" "] * width for _ in range(height)]

    def put(samples: int, value: float, mark: str) -> None:
        column = 0 if last == first else round((samples - first) / (last - first) * (width - 1))
        row = 0 if high == low else round((high - value) / (high - low) * (height - 1))
        current = grid[row][column]
        grid[row][column] = mark if current in (" ", mark) else BOTH_MARK

    for samples, loss, val in series:
        if loss is not None:
            put(samples, loss, LOSS_MARK)
        if val is not None:
            put(samples, val, VALIDATION_MARK)
    margin = max(len(_label(high)), len(_label(low)))
    for index, row in enumerate(grid):
        label = _label(high) if index == 0 else _label(low) if index == height - 1 else ""
        lines.append(f"{label:>{margin}} |{''.join(row).rstrip()}")
    lines.append(" " * margin + " +" + "-" * width)
    left, right = str(first), str(last)
    lines.append(" " * (margin + 2) + left + right.rjust(width - len(left)))
    legend = f"{LOSS_MARK} loss"
    if any(val is not None for _, _, val in series):
        legend += f"   {VALIDATION_MARK} validation loss"
    lines.append(" " * (margin + 2) + f"samples seen; {legend}")
    return "\n".join(lines)


def save_png(points: Sequence[LossPoint], output: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """The loss curve (and validation loss, and the learning rate on a second axis) as a PNG."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotUnavailableError(
            "a PNG needs matplotlib: pip install 'sft-operator[plot]' (without -o the curve is drawn as text)"
        ) from exc
    figure = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    loss = [(p.samples, p.loss) for p in points if p.loss is not None]
    validation = [(p.samples, p.val_loss) for p in points if p.val_loss is not None]
    if loss:
        axes.plot(*zip(*loss), color="tab:blue", linewidth=1.5, label="training loss")
    if validation:
        axes.plot(*zip(*validation), color="tab:orange", marker="o", markersize=3, linewidth=1, label="validation loss")
    axes.set_xlabel("samples seen")
    axes.set_ylabel("loss")
    axes.grid(True, alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()
    rates = [(p.samples, p.lr) for p in points if p.lr is not None]
    if rates:
        rate_axes = axes.twinx()
        rate_axes.plot(*zip(*rates), color="tab:gray", linestyle="--", linewidth=1, label="learning rate")
        rate_axes.set_ylabel("learning rate")
        rate_axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        more_handles, more_labels = rate_axes.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    if handles:
        axes.legend(handles, labels, loc="upper right")
    if title:
        axes.set_title(title)
    figure.tight_layout()
    path = Path(output)
    figure.savefig(path, format="png")
    return path


def plot_loss(points: Sequence[LossPoint], output: str | Path | None = None, *, title: str | None = None) -> str | Path:
    """A PNG at ``output`` (its path returned), else the text chart (returned)."""
    if output is not None:
        return save_png(points, output, title=title)
    return text_chart(points, title=title)
