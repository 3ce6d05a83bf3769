"""Exact-output tests of the checkpoint layout module on a synthetic tree."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from sft_core import checkpoints as ck

torch = pytest.importorskip("torch")

T0 = 1_700_000_000.0


def _touch(path: Path, mtime: float, content: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    os.utime(path, (mtime, mtime))


def _full_state(root: Path, name: str, metadata: dict | None, mtime: float) -> None:
    directory = root / "full_state" / name
    _touch(directory / "model.safetensors", mtime)
    if metadata is not None:
        torch.save(metadata, directory / "training_metadata.json")
        os.utime(directory / "training_metadata.json", (mtime, mtime))


def _hf(root: Path, name: str, mtime: float, weights: bool = True) -> None:
    directory = root / "hf_format" / name
    _touch(directory / "config.json", mtime, b"{}")
    if weights:
        _touch(directory / "model.safetensors", mtime)
    os.utime(directory, (mtime, mtime))


METRICS_LINES = [
    {
        "model_name_or_path": "/m",
        "output_dir": "/ckpt",
        "num_epochs": 3,
        "effective_batch_size": 4,
        "learning_rate": 0.001,
        "seed": 42,
        "current_epoch": 0,
    },
    {
        "num_gpus": 2,
        "avg_sample_len": 50.5,
        "effective_batch_size": 4,
        "num_batches": 2,
        "total_samples": 8,
        "timestamp": "t1",
    },
    {
        "epoch": 0,
        "step": 1,
        "samples_seen": 4,
        "avg_loss": 5.5,
        "lr": 0.001,
        "overall_throughput": 3.0,
        "batch_size": 4,
        "num_epoch_steps": 2,
        "total_samples": 8,
        "rank": 0,
        "timestamp": "t2",
    },
    {
        "epoch": 0,
        "step": 2,
        "samples_seen": 8,
        "avg_loss": 5.0,
        "lr": 0.0009,
        "overall_throughput": 3.5,
        "batch_size": 4,
        "num_epoch_steps": 2,
        "total_samples": 8,
        "rank": 0,
        "timestamp": "t3",
    },
    # instructlab-training's validation line: after its step's line, with that step.
    {"val_loss": 4.0, "val_num_tokens": 100, "step": 2},
    {"something": "else"},
]


@pytest.fixture()
def tree_root(tmp_path: Path) -> Path:
    root = tmp_path / "ckpt"
    _full_state(root, "epoch_0", {"current_epoch": 0, "samples_seen": 8}, T0 + 10)
    _full_state(root, "epoch_1", {"current_epoch": 1, "samples_seen": 16}, T0 + 20)
    _full_state(root, "epoch_2", {"current_epoch": 2, "samples_seen": 20, "global_step": 5}, T0 + 30)
    _full_state(root, "epoch_3", None, T0 + 40)  # being written, or torn
    _touch(root / "full_state" / "notes.txt", T0)
    _hf(root, "samples_8", T0 + 10)
    _hf(root, "samples_16", T0 + 20)
    _hf(root, "samples_20", T0 + 30)
    _hf(root, "samples_12", T0 + 15)
    _hf(root, "samples_24", T0 + 41, weights=False)
    (root / "hf_format" / "junk").mkdir()
    (root / ck.METRICS_LOG_FILE).write_text("".join(json.dumps(line) + "\n" for line in METRICS_LINES))
    ck.write_completion_marker(
        root,
        ck.CompletionMarker(
            finished_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
            num_epochs=3,
            samples_seen=24,
            final_checkpoint="hf_format/samples_24",
        ),
    )
    ck.write_data_ready(
        root,
        ck.DataReadyMarker(
            fingerprint="abc",
            data_dir="/ckpt/data",
            num_samples=8,
            created_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
        ),
    )
    return root


def test_scan_checkpoints_exact(tree_root: Path) -> None:
    tree = ck.scan_checkpoints(tree_root)
    assert tree.model_dump(mode="json") == {
        "root": str(tree_root),
        "hf_checkpoints": [
            {"name": "samples_8", "samples": 8, "epoch": 0, "mtime": T0 + 10, "complete": True},
            {"name": "samples_12", "samples": 12, "epoch": 1, "mtime": T0 + 15, "complete": True},
            {"name": "samples_16", "samples": 16, "epoch": 1, "mtime": T0 + 20, "complete": True},
            {"name": "samples_20", "samples": 20, "epoch": 2, "mtime": T0 + 30, "complete": True},
            {"name": "samples_24", "samples": 24, "epoch": 2, "mtime": T0 + 41, "complete": False},
        ],
        "full_states": [
            {
                "name": "epoch_0",
                "epoch": 0,
                "complete": True,
                "mtime": T0 + 10,
                "metadata": {
                    "current_epoch": 0,
                    "samples_seen": 8,
                    "global_step": None,
                    "steps_into_epoch": None,
                    "original_global_step": None,
                    "step_applied": None,
                },
                "directory": "full_state",
            },
            {
                "name": "epoch_1",
                "epoch": 1,
                "complete": True,
                "mtime": T0 + 20,
                "metadata": {
                    "current_epoch": 1,
                    "samples_seen": 16,
                    "global_step": None,
                    "steps_into_epoch": None,
                    "original_global_step": None,
                    "step_applied": None,
                },
                "directory": "full_state",
            },
            {
                "name": "epoch_2",
                "epoch": 2,
                "complete": True,
                "mtime": T0 + 30,
                "metadata": {
                    "current_epoch": 2,
                    "samples_seen": 20,
                    "global_step": 5,
                    "steps_into_epoch": None,
                    "original_global_step": None,
                    "step_applied": None,
                },
                "directory": "full_state",
            },
            {
                "name": "epoch_3",
                "epoch": 3,
                "complete": False,
                "mtime": (tree_root / "full_state" / "epoch_3").stat().st_mtime,
                "metadata": None,
                "directory": "full_state",
            },
        ],
        "stray_full_state_entries": ["notes.txt"],
        "completion": {
            "finished_at": "2026-01-02T03:04:05Z",
            "num_epochs": 3,
            "samples_seen": 24,
            "final_checkpoint": "hf_format/samples_24",
        },
        "data_ready": {
            "fingerprint": "abc",
            "data_dir": "/ckpt/data",
            "num_samples": 8,
            "created_at": "2026-01-01T00:00:00Z",
        },
        "samples_per_epoch": 8,
    }
    assert tree.latest_full_state.name == "epoch_2"
    assert [s.name for s in tree.incomplete_full_states] == ["epoch_3"]
    assert tree.latest_hf_checkpoint.name == "samples_20"
    assert [s.stable for s in tree.full_states] == [True, True, False, False]


def test_scan_empty_directory(tmp_path: Path) -> None:
    tree = ck.scan_checkpoints(tmp_path / "nothing-here")
    assert tree.model_dump() == {
        "root": str(tmp_path / "nothing-here"),
        "hf_checkpoints": [],
        "full_states": [],
        "stray_full_state_entries": [],
        "completion": None,
        "data_ready": None,
        "samples_per_epoch": None,
    }
    assert tree.latest_full_state is None and tree.latest_hf_checkpoint is None


def test_last_epoch_hf_checkpoint_sorts_last(tmp_path: Path) -> None:
    _hf(tmp_path, "last_epoch", T0)
    _hf(tmp_path, "samples_4", T0)
    names = [c.name for c in ck.scan_checkpoints(tmp_path).hf_checkpoints]
    assert names == ["samples_4", "last_epoch"]


def test_read_training_metadata_refuses_non_plain_data(tmp_path: Path) -> None:
    path = tmp_path / "training_metadata.json"
    torch.save({"current_epoch": 1, "samples_seen": 3, "t": torch.tensor([1])}, path)
    assert ck.read_training_metadata(path) is None
    path.write_bytes(b"PK\x03\x04truncated")
    assert ck.read_training_metadata(path) is None
    torch.save(
        {
            "current_epoch": 1,
            "samples_seen": 3,
            "global_step": 2,
            ck.META_STEPS_INTO_EPOCH: 1,
            ck.META_ORIGINAL_GLOBAL_STEP: 6,
            ck.META_STEP_APPLIED: False,
        },
        path,
    )
    metadata = ck.read_training_metadata(path)
    assert metadata == ck.FullStateMetadata(
        current_epoch=1, samples_seen=3, global_step=2, steps_into_epoch=1, original_global_step=6, step_applied=False
    )
    assert metadata.mid_epoch and metadata.normalized
    assert metadata.to_pickle_dict() == {
        "current_epoch": 1,
        "samples_seen": 3,
        "global_step": 2,
        "sft_steps_into_epoch": 1,
        "sft_original_global_step": 6,
        "sft_step_applied": False,
    }


def test_read_metrics_log_types_and_offsets(tmp_path: Path) -> None:
    path = tmp_path / ck.METRICS_LOG_FILE
    body = "".join(json.dumps(line) + "\n" for line in METRICS_LINES)
    path.write_text(body + "{not json}\n" + '{"epoch": 1, "step": 3, "samp')
    log = ck.read_metrics_log(path)
    assert log.hparams == [
        ck.HparamsRecord(
            model_name_or_path="/m",
            output_dir="/ckpt",
            num_epochs=3,
            effective_batch_size=4,
            learning_rate=0.001,
            seed=42,
        )
    ]
    assert log.totals == [
        ck.TotalsRecord(
            total_samples=8, num_batches=2, num_gpus=2, effective_batch_size=4, avg_sample_len=50.5, timestamp="t1"
        )
    ]
    assert [(s.epoch, s.step, s.samples_seen, s.avg_loss) for s in log.steps] == [(0, 1, 4, 5.5), (0, 2, 8, 5.0)]
    assert log.validations == [ck.ValidationRecord(val_loss=4.0, val_num_tokens=100, step=2, samples_seen=8)]
    assert log.other == [{"something": "else"}]
    assert log.skipped_lines == 1
    # The torn last line is not consumed: reading on from end_offset picks it up once complete.
    assert log.end_offset == len(body) + len("{not json}\n")
    with open(path, "a") as handle:
        handle.write('les_seen": 12}\n')
    tail = ck.read_metrics_log(path, offset=log.end_offset)
    assert [(s.epoch, s.step, s.samples_seen) for s in tail.steps] == [(1, 3, 12)]
    assert tail.end_offset == path.stat().st_size
    assert ck.read_metrics_log(tmp_path / "missing.jsonl").end_offset == 0


def test_epoch_of_samples() -> None:
    assert [ck.epoch_of_samples(s, 8) for s in (1, 8, 9, 16, 17)] == [0, 0, 1, 1, 2]
    assert ck.epoch_of_samples(0, 8) is None
    assert ck.epoch_of_samples(5, None) is None


def _synthetic(states: list[tuple[int, dict | None]]) -> ck.CheckpointTree:
    return ck.CheckpointTree(
        root="/r",
        hf_checkpoints=[],
        stray_full_state_entries=[],
        completion=None,
        data_ready=None,
        samples_per_epoch=None,
        full_states=[
            ck.FullState(
                name=f"epoch_{epoch}",
                epoch=epoch,
                complete=meta is not None,
                mtime=0.0,
                metadata=ck.FullStateMetadata.model_validate(meta) if meta else None,
            )
            for epoch, meta in states
        ],
    )


def _end(epoch: int) -> dict:
    return {"current_epoch": epoch, "samples_seen": 8 * (epoch + 1)}


def test_retention_keeps_newest_stable_states() -> None:
    tree = _synthetic([(0, _end(0)), (1, _end(1)), (2, _end(2)), (3, _end(3))])
    assert [s.name for s in ck.full_states_to_prune(tree, 2)] == ["epoch_0", "epoch_1"]
    assert [s.name for s in ck.full_states_to_prune(tree, 4)] == []


def test_retention_waits_for_a_newer_complete_state() -> None:
    # epoch_2 is still being written: nothing older may go yet, and it is never a candidate.
    tree = _synthetic([(0, _end(0)), (1, _end(1)), (2, None)])
    assert ck.full_states_to_prune(tree, 1) == [tree.full_states[0]]
    tree = _synthetic([(0, _end(0)), (1, None)])
    assert ck.full_states_to_prune(tree, 1) == []


def test_retention_does_not_count_mid_epoch_states() -> None:
    mid = {"current_epoch": 2, "samples_seen": 20, "global_step": 5}
    tree = _synthetic([(0, _end(0)), (1, _end(1)), (2, mid)])
    assert [s.name for s in ck.full_states_to_prune(tree, 1)] == ["epoch_0"]
    assert ck.full_states_to_prune(tree, 2) == []
    with pytest.raises(ValueError, match="fullStateRetention must be >= 1"):
        ck.full_states_to_prune(tree, 0)


def test_prune_and_set_aside_on_disk(tree_root: Path) -> None:
    assert ck.prune_full_states(tree_root, 1) == ["epoch_0"]
    assert sorted(p.name for p in (tree_root / "full_state").iterdir()) == [
        "epoch_1",
        "epoch_2",
        "epoch_3",
        "notes.txt",
    ]
    moved = ck.set_aside(tree_root, ["epoch_3", "notes.txt"], now=datetime(2026, 1, 2, 3, 4, 5))
    assert moved == [
        "sft-operator/set-aside/epoch_3-20260102T030405",
        "sft-operator/set-aside/notes.txt-20260102T030405",
    ]
    assert (tree_root / moved[0] / "model.safetensors").exists()
    tree = ck.scan_checkpoints(tree_root)
    assert [s.name for s in tree.full_states] == ["epoch_1", "epoch_2"]
    assert tree.stray_full_state_entries == []


def test_run_records_round_trip_and_ignore_torn_line(tmp_path: Path) -> None:
    record = ck.RunRecord(
        started_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
        start_epoch=2,
        steps_into_epoch=1,
        start_samples_seen=20,
        metrics_log_offset=123,
        resumed_from="epoch_2",
    )
    ck.append_run_record(tmp_path, record)
    with open(tmp_path / ck.RUNS_LOG_FILE, "a") as handle:
        handle.write('{"started_at": "2026')
    assert ck.read_run_records(tmp_path) == [record]
    assert ck.read_run_records(tmp_path / "none") == []


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "COMPLETED"
    ck.atomic_write_bytes(target, b"one")
    ck.atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["COMPLETED"]
    assert ck.read_completion_marker(tmp_path) is None
    assert ck.read_data_ready(tmp_path) is None
