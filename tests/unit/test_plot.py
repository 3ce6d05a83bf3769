"""The loss curve: the text chart (exact), the PNG (matplotlib), result.plot_loss() and
`sft-operator plot` against a job object (no cluster)."""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

import sft_client.api
from sft_client.api.plot import loss_points, save_png, text_chart
from sft_client.api.results import result_of
from sft_client.cli import app
from sft_core import checkpoints as ck
from sft_core.progress import LossHistory, LossPoint, Stage, TrainingProgress

POINTS = [
    LossPoint(samples=0, loss=3.0, lr=1e-4),
    LossPoint(samples=10, loss=2.0, val_loss=2.5),
    LossPoint(samples=20, loss=1.5),
    LossPoint(samples=30, loss=1.0, val_loss=1.0),
]


def test_text_chart_exact() -> None:
    assert text_chart(POINTS, width=16, height=5, title="t") == "\n".join(
        [
            "t",
            "3 |*",
            "  |     o",
            "  |     *",
            "  |          *",
            "1 |               @",
            "  +----------------",
            "   0             30",
            "   samples seen; * loss   o validation loss",
        ]
    )
    assert text_chart([], title="x") == "x\nno loss history yet"
    flat = text_chart([LossPoint(samples=5, loss=2.0)], width=4, height=2)
    assert flat.splitlines()[:2] == ["2 |*", "2 |"]


def realistic_history(steps: int = 3000) -> list[LossPoint]:
    """A run's history as the reporter builds it: loss falling with noise, a validation every 50
    steps, warm-up then cosine decay of the learning rate."""
    history = LossHistory()
    for step in range(1, steps + 1):
        noise = 0.08 * math.sin(step * 1.7) + 0.05 * math.sin(step * 0.31)
        loss = 0.6 + 2.2 * math.exp(-step / 600) + noise
        lr = 2e-5 * min(1.0, step / 200) * (0.5 + 0.5 * math.cos(math.pi * step / steps))
        history.add_step(
            ck.StepRecord(epoch=step * 3 // steps, step=step, samples_seen=16 * step, avg_loss=loss, lr=lr)
        )
        if step % 50 == 0:
            history.add_validation(
                ck.ValidationRecord(val_loss=0.7 + 2.0 * math.exp(-step / 700), step=step, samples_seen=16 * step)
            )
    return history.points()


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_png_of_a_realistic_run(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the 'plot' extra (matplotlib) is not installed")
    points = realistic_history()
    assert len(points) <= 256
    path = save_png(points, tmp_path / "loss.png", title="ml/qwen")
    assert _png_size(path) == (800, 450)
    if os.environ.get("SFT_KEEP_PLOT"):  # to look at it: SFT_KEEP_PLOT=/tmp/loss.png
        Path(os.environ["SFT_KEEP_PLOT"]).write_bytes(path.read_bytes())


def _job(points: list[LossPoint] | None) -> dict:
    progress = TrainingProgress(stage=Stage.TRAINING, epoch=1, num_epochs=2, samples_seen=30, loss_history=points)
    return {
        "metadata": {"name": "qwen", "namespace": "ml"},
        "status": {"phase": "Running", "progress": progress.to_api()},
    }


def test_result_plot_loss(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = result_of(_job(POINTS))
    assert result.loss_history == POINTS
    assert loss_points(None) == [] and result_of(_job(None)).loss_history == []
    assert result.plot_loss() is None
    assert capsys.readouterr().out.splitlines()[:2] == ["ml/qwen", "3 |*"]
    pytest.importorskip("matplotlib")
    assert result.plot_loss(tmp_path / "r.png") == tmp_path / "r.png"
    assert _png_size(tmp_path / "r.png") == (800, 450)


@pytest.fixture
def one_job(monkeypatch: pytest.MonkeyPatch):
    jobs = {}
    monkeypatch.setattr(sft_client.api, "connect", lambda kubeconfig, context: (object(), "ml"))

    def get_job(client, name, namespace):
        if name not in jobs:
            raise sft_client.api.SFTJobNotFoundError(f"sftjob {namespace}/{name} not found")
        return jobs[name]

    monkeypatch.setattr(sft_client.api, "get_job", get_job)
    return jobs


def test_cli_plot_text_png_and_errors(one_job: dict, tmp_path: Path) -> None:
    runner = CliRunner()
    one_job["qwen"] = _job(POINTS)
    one_job["fresh"] = _job(None)
    text = runner.invoke(app, ["plot", "qwen", "--width", "16", "--height", "5"])
    assert text.exit_code == 0, text.output
    assert text.stdout.splitlines()[:2] == ["ml/qwen: loss by samples seen", "3 |*"]
    assert runner.invoke(app, ["plot", "fresh"]).exit_code == 1
    missing = runner.invoke(app, ["plot", "nope"])
    assert missing.exit_code == 1 and "not found" in missing.stderr
    pytest.importorskip("matplotlib")
    png = runner.invoke(app, ["plot", "qwen", "-o", str(tmp_path / "c.png")])
    assert png.exit_code == 0, png.output
    assert "wrote" in png.stderr and _png_size(tmp_path / "c.png") == (800, 450)
