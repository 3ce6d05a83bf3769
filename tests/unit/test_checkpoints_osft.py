"""The checkpoint reader on rhai-innovation-mini-trainer's layout (spec.algorithm osft), with files
written the way mini-trainer 0.9.0 writes them (torch.save of its training_state dict)."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import torch

from sft_core import checkpoints as ck

T0 = 1_700_000_000.0


def _touch(path: Path, mtime: float, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def _state(root: Path, step: int, epoch: int, samples: float | None, mtime: float) -> None:
    directory = root / "full_state_checkpoints" / f"step_{step}"
    _touch(directory / "optimizer_rank_0.pt", mtime)
    if samples is not None:
        # What mini-trainer's FullStateCheckpointer._save_metadata writes (lr scheduler state trimmed).
        torch.save(
            {
                "step": step,
                "epoch": epoch,
                "total_samples_accumulated": samples,
                "total_tokens_processed": 100 * step,
                "last_validation_loss": None,
                "checkpointer_state": {"last_saved_samples": 48.0, "best_val_loss": None},
                "lr_scheduler_state": {"base_lrs": [0.001], "last_epoch": step, "lr_lambdas": [{}]},
                "sampler_epoch": epoch,
            },
            directory / "training_state.pt",
        )
        os.utime(directory / "training_state.pt", (mtime, mtime))


def _hf(root: Path, name: str, mtime: float) -> None:
    directory = root / "hf_format" / name
    _touch(directory / "config.json", mtime, b"{}")
    _touch(directory / "model.safetensors", mtime)
    os.utime(directory, (mtime, mtime))


def _metrics_line(step: int, epoch: int, samples: float, loss: float) -> str:
    return json.dumps(
        {
            "step": step,
            "epoch": epoch,
            "steps_per_epoch": 12,
            "lr": 0.001,
            "grad_norm": 1.5,
            "loss": loss,
            "num_samples": 4.0,
            "total_samples_accumulated": samples,
            "samples_per_second": 17.5,
            "peak_memory_usage_GB": 0.0,
            "val_loss": None,
            "timestamp": f"2026-12-07T12:00:{step:02d}.000001",
        }
    )


def osft_tree(root: Path) -> Path:
    _hf(root, "samples_48.0", T0 + 10)
    _hf(root, "samples_96.0", T0 + 20)
    _touch(root / "hf_format" / "samples_144.0" / "config.json", T0 + 30, b"{}")  # being written
    _state(root, 17, 1, 68.0, T0 + 15)
    _state(root, 30, 2, 120.0, T0 + 25)
    _state(root, 33, 2, None, T0 + 28)  # no training_state.pt yet: incomplete
    (root / "full_state_checkpoints" / "notes.txt").write_text("not a state")
    lines = [_metrics_line(1, 0, 4.0, 5.5), _metrics_line(2, 0, 8.0, 5.25)]
    (root / "training_metrics_0.jsonl").write_text("\n".join(lines) + "\n" + '{"step": 3, "ep')
    ck.write_data_ready(
        root,
        ck.DataReadyMarker(
            fingerprint="f",
            data_dir=str(root / "data"),
            num_samples=48,
            created_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
        ),
    )
    return root


def test_scan_reads_the_osft_layout_exactly(tmp_path: Path) -> None:
    tree = ck.scan_checkpoints(osft_tree(tmp_path))
    assert [c.model_dump() for c in tree.hf_checkpoints] == [
        {"name": "samples_48.0", "samples": 48, "epoch": 0, "mtime": T0 + 10, "complete": True},
        {"name": "samples_96.0", "samples": 96, "epoch": 1, "mtime": T0 + 20, "complete": True},
        {
            "name": "samples_144.0",
            "samples": 144,
            "epoch": 2,
            "mtime": (tmp_path / "hf_format" / "samples_144.0").stat().st_mtime,
            "complete": False,
        },
    ]
    assert [s.model_dump() for s in tree.full_states] == [
        {
            "name": "step_17",
            "epoch": 1,
            "complete": True,
            "mtime": T0 + 15,
            "directory": "full_state_checkpoints",
            "metadata": {
                "current_epoch": 1,
                "samples_seen": 68,
                "global_step": 17,
                "steps_into_epoch": None,
                "original_global_step": None,
                "step_applied": None,
            },
        },
        {
            "name": "step_30",
            "epoch": 2,
            "complete": True,
            "mtime": T0 + 25,
            "directory": "full_state_checkpoints",
            "metadata": {
                "current_epoch": 2,
                "samples_seen": 120,
                "global_step": 30,
                "steps_into_epoch": None,
                "original_global_step": None,
                "step_applied": None,
            },
        },
        {
            "name": "step_33",
            "epoch": 0,
            "complete": False,
            "directory": "full_state_checkpoints",
            "mtime": (tmp_path / "full_state_checkpoints" / "step_33").stat().st_mtime,
            "metadata": None,
        },
    ]
    assert tree.latest_full_state.path == "full_state_checkpoints/step_30"
    assert tree.latest_full_state.metadata.mid_epoch
    assert [s.name for s in tree.incomplete_full_states] == ["step_33"]
    # mini-trainer's resume ignores other names: nothing for ours to set aside
    assert tree.stray_full_state_entries == []
    # no totals line in mini-trainer's log: an epoch is the processed data's samples
    assert tree.samples_per_epoch == 48


def test_metrics_log_reads_mini_trainer_lines(tmp_path: Path) -> None:
    root = osft_tree(tmp_path)
    assert ck.metrics_log_path(root) == root / "training_metrics_0.jsonl"
    log = ck.read_metrics_log(ck.metrics_log_path(root))
    assert [s.model_dump() for s in log.steps] == [
        {
            "timestamp": "2026-12-07T12:00:01.000001",
            "epoch": 0,
            "step": 1,
            "samples_seen": 4,
            "avg_loss": 5.5,
            "lr": 0.001,
            "overall_throughput": 17.5,
            "batch_size": 4,
            "num_epoch_steps": 12,
            "total_samples": None,
        },
        {
            "timestamp": "2026-12-07T12:00:02.000001",
            "epoch": 0,
            "step": 2,
            "samples_seen": 8,
            "avg_loss": 5.25,
            "lr": 0.001,
            "overall_throughput": 17.5,
            "batch_size": 4,
            "num_epoch_steps": 12,
            "total_samples": None,
        },
    ]
    # the torn last line is left for the next read
    assert (log.skipped_lines, log.other, log.end_offset) == (
        0,
        [],
        len((root / "training_metrics_0.jsonl").read_bytes()) - len('{"step": 3, "ep'),
    )


def test_retention_keeps_the_newest_complete_osft_states(tmp_path: Path) -> None:
    root = osft_tree(tmp_path)
    _state(root, 5, 0, 20.0, T0 + 5)
    tree = ck.scan_checkpoints(root)
    assert [s.name for s in tree.full_states] == ["step_5", "step_17", "step_30", "step_33"]
    assert [s.name for s in ck.full_states_to_prune(tree, 2)] == ["step_5"]
    assert [s.name for s in ck.full_states_to_prune(tree, 1)] == ["step_5", "step_17"]
    assert ck.full_states_to_prune(tree, 3) == []
    assert ck.prune_full_states(root, 1) == ["step_5", "step_17"]
    assert sorted(p.name for p in (root / "full_state_checkpoints").iterdir()) == ["notes.txt", "step_30", "step_33"]


def test_set_aside_moves_an_incomplete_osft_state(tmp_path: Path) -> None:
    root = osft_tree(tmp_path)
    moved = ck.set_aside(
        root, ["step_33"], now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc), directory=ck.OSFT_FULL_STATE_DIR
    )
    assert moved == ["sft-operator/set-aside/step_33-20260102T030405"]
    assert [s.name for s in ck.scan_checkpoints(root).full_states] == ["step_17", "step_30"]


def test_sft_metrics_log_is_used_without_the_osft_one(tmp_path: Path) -> None:
    assert ck.metrics_log_path(tmp_path) == tmp_path / "training_params_and_metrics_global0.jsonl"


def test_the_status_summary_of_an_osft_volume(tmp_path: Path) -> None:
    from sft_core.progress import summarize_progress

    root = osft_tree(tmp_path)
    tree = ck.scan_checkpoints(root)
    last = ck.read_metrics_log(ck.metrics_log_path(root)).steps[-1]
    progress = summarize_progress(tree, num_epochs=3, last_step=last, last_totals=None, runs=[], data_dir_exists=True)
    assert progress.to_api() == {
        "stage": "Saving",  # samples_144.0 has no weights yet
        "epoch": 1,
        "numEpochs": 3,
        "epochDisplay": "1/3",
        "samplesSeen": 8,
        "totalSamples": 144,  # DATA_READY's 48 samples an epoch, 3 epochs
        "percent": 5,
        "percentDisplay": "5%",
        "lastLoss": "5.2500",
        "throughput": "17.50",
        "etaSeconds": 7,
        "checkpoints": [
            {
                "name": "samples_48.0",
                "path": "hf_format/samples_48.0",
                "samples": 48,
                "epoch": 1,
                "time": "2023-11-14T22:13:30Z",
            },
            {
                "name": "samples_96.0",
                "path": "hf_format/samples_96.0",
                "samples": 96,
                "epoch": 2,
                "time": "2023-11-14T22:13:40Z",
            },
        ],
        "latestCheckpoint": "samples_96.0",
        "latestFullState": {
            "name": "step_30",
            "path": "full_state_checkpoints/step_30",
            "epoch": 3,
            "samples": 120,
            "midEpoch": True,
            "time": "2023-11-14T22:13:45Z",
        },
        "resumable": True,
        "lastUpdateTime": "2026-12-07T12:00:02Z",
    }
