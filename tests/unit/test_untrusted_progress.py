"""The progress a job's own pods report (its progress ConfigMap, its checkpoint volume) is checked
value by value against the status schema before it reaches a status patch: exact results for
garbage (progress.parse_progress_summary, untrusted.validate_dropping)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from devtools.crd import status_schema
from sft_core import checkpoints as ck
from sft_core.progress import (
    MAX_CHECKPOINTS,
    MAX_LOSS_HISTORY,
    TrainingProgress,
    parse_progress_summary,
    summarize_progress,
)
from sft_core.untrusted import DroppedValue
from sft_core.wire import MAX_API_INT

T1 = "2026-01-01T00:05:00Z"
CHECKPOINT = {"name": "samples_40", "path": "hf_format/samples_40", "samples": 40, "epoch": 1, "time": T1}
GOOD = {
    "stage": "Training",
    "epoch": 1,
    "numEpochs": 2,
    "epochDisplay": "1/2",
    "samplesSeen": 40,
    "totalSamples": 200,
    "percent": 20,
    "percentDisplay": "20%",
    "lastLoss": "0.4321",
    "throughput": "12.50",
    "etaSeconds": 12,
    "checkpoints": [CHECKPOINT],
    "latestCheckpoint": "samples_40",
    "latestFullState": {
        "name": "epoch_0",
        "path": "full_state/epoch_0",
        "epoch": 1,
        "samples": 40,
        "midEpoch": False,
        "time": T1,
    },
    "resumable": True,
    "lastUpdateTime": T1,
    "lossHistory": [{"samples": 20, "loss": 0.9, "lr": 0.001}, {"samples": 40, "loss": 0.4321, "valLoss": 0.5}],
}


def dropped(raw: dict) -> tuple[dict | None, list[tuple[str, str, str, str, int]]]:
    checked = parse_progress_summary(json.dumps(raw))
    value = checked.value.to_api() if checked.value is not None else None
    return value, [(d.key, d.path, d.problem, d.value, d.count) for d in checked.dropped]


def test_a_good_summary_passes_whole() -> None:
    assert dropped(GOOD) == (GOOD, [])


def test_bad_date_times_are_dropped() -> None:
    value, problems = dropped(
        {
            **GOOD,
            "lastUpdateTime": "yesterday",
            "checkpoints": [
                CHECKPOINT,
                {**CHECKPOINT, "name": "samples_80", "time": "2026-13-01T00:00:00Z"},
                {**CHECKPOINT, "name": "samples_90", "time": "2026-01-01 00:00:00"},
            ],
        }
    )
    assert value == {k: v for k, v in GOOD.items() if k != "lastUpdateTime"}  # the items without a time go
    why = "not a date-time as the API writes it (YYYY-MM-DDTHH:MM:SSZ, a real date, UTC)"
    assert problems == [
        ("checkpoints[].time", "checkpoints[1].time", why, "'2026-13-01T00:00:00Z'", 2),
        ("lastUpdateTime", "lastUpdateTime", why, "'yesterday'", 1),
    ]


def test_integers_past_the_bound_or_below_zero_are_dropped() -> None:
    value, problems = dropped(
        {
            **GOOD,
            "samplesSeen": 2**70,
            "etaSeconds": 2**63,
            "totalSamples": MAX_API_INT,
            "latestFullState": {**GOOD["latestFullState"], "samples": -1},
            "checkpoints": [{**CHECKPOINT, "samples": 2**70}],
        }
    )
    expected = {
        **GOOD,
        "samplesSeen": 0,
        "totalSamples": MAX_API_INT,
        "latestFullState": {"name": "epoch_0", "path": "full_state/epoch_0", "epoch": 1, "midEpoch": False, "time": T1},
        "checkpoints": [{"name": "samples_40", "path": "hf_format/samples_40", "epoch": 1, "time": T1}],
    }
    del expected["etaSeconds"]
    assert value == expected
    at_most = f"Input should be less than or equal to {MAX_API_INT}"
    assert problems == [
        ("samplesSeen", "samplesSeen", at_most, str(2**70), 1),
        ("etaSeconds", "etaSeconds", at_most, str(2**63), 1),
        ("checkpoints[].samples", "checkpoints[0].samples", at_most, str(2**70), 1),
        ("latestFullState.samples", "latestFullState.samples", "Input should be greater than or equal to 0", "-1", 1),
    ]


def test_strings_for_numbers_and_other_wrong_types_are_dropped() -> None:
    value, problems = dropped(
        {
            **GOOD,
            "epoch": "3",
            "percent": 20.0,
            "resumable": "yes",
            "stage": 5,
            "lastLoss": 0.43,
            "latestFullState": "epoch_0",
            "checkpoints": [7, CHECKPOINT],
            "lossHistory": [{"samples": "20", "loss": 0.9}],
        }
    )
    expected = {
        **GOOD,
        "stage": "Initializing",
        "epoch": 0,
        "percent": 0,
        "resumable": False,
        "checkpoints": [CHECKPOINT],
        "lossHistory": [],
    }
    del expected["lastLoss"], expected["latestFullState"]
    assert value == expected
    assert [(key, problem) for key, _, problem, _, _ in problems] == [
        (
            "stage",
            "Input should be 'Downloading', 'Initializing', 'ProcessingData', 'Training', 'Saving' or 'Completed'",
        ),
        ("epoch", "Input should be a valid integer"),
        ("percent", "Input should be a valid integer"),
        ("lastLoss", "Input should be a valid string"),
        ("checkpoints[]", "Input should be a valid dictionary or instance of CheckpointInfo"),
        ("latestFullState", "Input should be a valid dictionary or instance of FullStateInfo"),
        ("resumable", "Input should be a valid boolean"),
        ("lossHistory[].samples", "Input should be a valid integer"),
    ]


def test_nan_and_infinity_are_dropped() -> None:
    raw = json.dumps(GOOD).replace('"loss": 0.9', '"loss": NaN').replace('"lr": 0.001', '"lr": Infinity')
    checked = parse_progress_summary(raw)
    assert checked.value is not None
    assert checked.value.to_api()["lossHistory"] == [{"samples": 20}, GOOD["lossHistory"][1]]
    assert [(d.key, d.problem, d.value) for d in checked.dropped] == [
        ("lossHistory[].loss", "Input should be a finite number", "nan"),
        ("lossHistory[].lr", "Input should be a finite number", "inf"),
    ]


def test_lists_past_their_bound_go_whole_and_long_strings_go() -> None:
    value, problems = dropped(
        {
            **GOOD,
            "lossHistory": [{"samples": i} for i in range(MAX_LOSS_HISTORY + 1)],
            "checkpoints": [CHECKPOINT] * (MAX_CHECKPOINTS + 1),
            "throughput": "9" * 100,
            "latestCheckpoint": "x" * 256,
        }
    )
    assert value == {k: v for k, v in GOOD.items() if k not in ("lossHistory", "throughput", "latestCheckpoint")} | {
        "checkpoints": []
    }
    assert problems == [
        ("throughput", "throughput", "String should have at most 32 characters", repr("9" * 100)[:45] + "...", 1),
        (
            "checkpoints",
            "checkpoints",
            f"List should have at most {MAX_CHECKPOINTS} items after validation, not {MAX_CHECKPOINTS + 1}",
            f"a list of {MAX_CHECKPOINTS + 1} items",
            1,
        ),
        (
            "latestCheckpoint",
            "latestCheckpoint",
            "String should have at most 255 characters",
            repr("x" * 256)[:45] + "...",
            1,
        ),
        (
            "lossHistory",
            "lossHistory",
            f"List should have at most {MAX_LOSS_HISTORY} items after validation, not {MAX_LOSS_HISTORY + 1}",
            f"a list of {MAX_LOSS_HISTORY + 1} items",
            1,
        ),
    ]


def test_what_is_not_an_object_is_refused_whole() -> None:
    assert parse_progress_summary("[1, 2]").value is None
    assert parse_progress_summary("[1, 2]").dropped == (
        DroppedValue("", "", "Input should be a valid dictionary or instance of TrainingProgress", "a list of 2 items"),
    )
    unreadable = parse_progress_summary("{not json")
    assert unreadable.value is None
    assert [(d.key, d.problem.split(":")[0], d.value) for d in unreadable.dropped] == [("", "not JSON", "'{not json'")]
    deep = parse_progress_summary("[" * 100_000)
    assert deep.value is None and deep.dropped[0].problem.startswith("not JSON")


def test_every_dropped_value_is_described_with_its_key() -> None:
    checked = parse_progress_summary(
        json.dumps(
            {**GOOD, "samplesSeen": 2**70, "lossHistory": [{"samples": 1, "lr": "a"}, {"samples": 2, "lr": "b"}]}
        )
    )
    assert [d.describe("status.progress") for d in checked.dropped] == [
        f"status.progress.samplesSeen = {2**70}: Input should be less than or equal to {MAX_API_INT}",
        "status.progress.lossHistory[0].lr = 'a': Input should be a valid number (2 values under "
        "status.progress.lossHistory[].lr dropped)",
    ]


def test_the_crd_carries_the_models_bounds() -> None:
    """The bounds the operator checks are the CRD's own (generated from the same model)."""
    progress = status_schema()["properties"]["progress"]["properties"]
    assert progress["samplesSeen"] == {"type": "integer", "minimum": 0, "maximum": MAX_API_INT}
    assert progress["lastUpdateTime"]["format"] == "date-time"
    assert progress["checkpoints"]["maxItems"] == MAX_CHECKPOINTS
    assert progress["checkpoints"]["items"]["properties"]["time"]["format"] == "date-time"
    assert progress["lossHistory"]["maxItems"] == MAX_LOSS_HISTORY
    assert progress["throughput"]["maxLength"] == 32


# --- the volume side: what the reporter summarizes ----------------------------------------------


def test_a_samples_directory_past_the_bound_is_not_a_checkpoint(tmp_path: Path) -> None:
    for name in ("samples_40", f"samples_{2**70}", f"samples_{MAX_API_INT + 1}", f"samples_{MAX_API_INT}"):
        directory = tmp_path / "hf_format" / name
        directory.mkdir(parents=True)
        (directory / "config.json").write_text("{}")
        (directory / "model.safetensors").write_bytes(b"x")
        os.utime(directory, (1_700_000_000, 1_700_000_000))
    tree = ck.scan_checkpoints(tmp_path)
    assert [c.name for c in tree.hf_checkpoints] == ["samples_40", f"samples_{MAX_API_INT}"]
    progress = summarize_progress(tree, num_epochs=1, last_step=None, last_totals=None, runs=[], data_dir_exists=False)
    assert [c.samples for c in progress.checkpoints] == [40, MAX_API_INT]
    assert progress.latest_checkpoint == f"samples_{MAX_API_INT}"


def test_the_summary_leaves_out_what_the_schema_cannot_hold() -> None:
    """A volume the job's code wrote garbage into: the reporter's summary drops the values and
    keeps the rest (it is never refused whole, so progress goes on being published)."""
    step = ck.StepRecord(epoch=2**70, step=1, samples_seen=2**70, avg_loss=float("inf"), overall_throughput=1e300)
    tree = ck.CheckpointTree(
        root="/ckpt",
        hf_checkpoints=[ck.HfCheckpoint(name="samples_8", samples=8, epoch=0, mtime=1_700_000_000.0, complete=True)],
        full_states=[],
        stray_full_state_entries=[],
        completion=None,
        data_ready=None,
        samples_per_epoch=None,
    )
    progress = summarize_progress(tree, num_epochs=1, last_step=step, last_totals=None, runs=[], data_dir_exists=True)
    assert progress.to_api() == {
        "stage": "ProcessingData",
        "epoch": 1,
        "numEpochs": 1,
        "epochDisplay": "1/1",
        "samplesSeen": 0,
        "percent": 0,
        "percentDisplay": "0%",
        "lastLoss": "inf",
        "checkpoints": [
            {
                "name": "samples_8",
                "path": "hf_format/samples_8",
                "samples": 8,
                "epoch": 1,
                "time": "2023-11-14T22:13:20Z",
            }
        ],
        "latestCheckpoint": "samples_8",
        "resumable": False,
        "lastUpdateTime": "2023-11-14T22:13:20Z",
    }
    assert TrainingProgress.model_validate(progress.to_api()) == progress


def test_the_reporter_publishes_the_rest_and_logs_each_dropped_key_once(tmp_path: Path, caplog) -> None:
    """A metrics log with 2^70 samples and a samples_<2^70> directory (the job's code wrote
    them): the reporter's summary leaves them out, says so once per key, and keeps publishing."""
    from sft_reporter.sidecar import VolumeReader

    directory = tmp_path / "hf_format" / f"samples_{2**70}"
    directory.mkdir(parents=True)
    (directory / "config.json").write_text("{}")
    (directory / "model.safetensors").write_bytes(b"x")
    step = {
        "epoch": 0,
        "step": 1,
        "samples_seen": 2**70,
        "avg_loss": 0.5,
        "overall_throughput": 1e300,
        "timestamp": "2026-01-01T00:00:00",
    }
    (tmp_path / ck.METRICS_LOG_FILE).write_text(json.dumps(step) + "\n")
    reader = VolumeReader(ckpt_dir=tmp_path, data_dir=tmp_path / "data", num_epochs=1)
    with caplog.at_level("WARNING", logger="sft_reporter.sidecar"):
        first, again = reader.read(), reader.read()
    assert first == again
    assert first.to_api() == {
        "stage": "Initializing",
        "epoch": 1,
        "numEpochs": 1,
        "epochDisplay": "1/1",
        "samplesSeen": 0,
        "percent": 0,
        "percentDisplay": "0%",
        "lastLoss": "0.5000",
        "checkpoints": [],
        "resumable": False,
        "lastUpdateTime": "2026-01-01T00:00:00Z",
    }
    assert [r.getMessage().split(" = ")[0] for r in caplog.records] == [
        "left out of the summary: progress.samplesSeen",
        "left out of the summary: progress.throughput",
    ]
