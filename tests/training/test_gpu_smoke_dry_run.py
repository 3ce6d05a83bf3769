"""benchmarks/gpu_smoke.py --dry-run: every step of the GPU smoke run, on CPU, for real
(launcher from source, SIGTERM mid-epoch and exact resume, a bare run_training), so the script a
GPU machine runs is known to work before one is lent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.training, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
CHECKS = [
    "reference exits 0 after idling",
    "completion marker",
    "final hf checkpoint complete",
    "metrics log: every step of every epoch",
    "SIGTERM: exit 3 after an on-demand save",
    "SIGTERM: a complete mid-epoch full state",
    "interrupted run: the reference's steps",
    "resume: exactly the reference's steps after the save",
    "resume: the reference's losses",
    "bare run: exit 0, the same steps",
]


def test_gpu_smoke_dry_run_passes_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_smoke.py"),
            "--dry-run",
            "--json",
            str(out),
            "--work",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=1400,
        cwd=ROOT,
    )
    print(proc.stdout[-6000:], proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stdout[-6000:]
    result = json.loads(out.read_text())
    assert result["ok"] is True
    assert result["mode"] == "dry-run"
    assert list(result["checks"]) == CHECKS and all(result["checks"].values()), result["checks"]
    # The versions it logs; on CPU the group instructlab-training makes is gloo, 30 minutes.
    versions = result["versions"]
    assert versions["instructlab_training"] == "0.16.2"
    assert versions["collective_timeout"] == {"backend": "ProcessGroupGloo", "timeout_s": 1800.0}
    plan = result["plan"]
    runs = result["runs"]
    assert runs["reference"]["steps"] == runs["bare"]["steps"] == 2 * 16  # 64 samples / 4, 2 epochs
    assert runs["preempted"]["full_state_bytes"] > 0 and runs["preempted"]["save_s"] > 0
    # fp32 weights, saved twice (instructlab-training prepares the model with accelerate twice,
    # and save_state writes each prepared model), and Adam's two fp32 moments: ~16 bytes/param,
    # the figure docs/trainer.md's sizing starts from.
    assert 15 < runs["preempted"]["full_state_bytes_per_param"] < 17.5, runs["preempted"]
    assert runs["resumed"]["resumed_from"] == "epoch_1"
    assert runs["resumed"]["max_loss_rel_diff"] <= plan["loss_rel_tolerance"]
    assert result["launcher_overhead_pct"] is not None
    # The figures table: one row per figure and per check, in the output.
    for row in (
        "driver CUDA (cuDriverGetVersion)",
        "torch / its CUDA / NCCL",
        "launcher overhead in samples/s",
        "SIGTERM: save to exit 3",
        "resume: max loss rel. difference",
        *(f"check: {name}" for name in CHECKS),
    ):
        assert row in proc.stdout, row
