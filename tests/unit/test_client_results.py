"""Status -> what sft() returns and shows (pure): the status read through the operator's models
(SFTJobStatus, TrainingProgress), checkpoints as reusable paths, failure reason, and the one
progress formatter behind both the plain lines and the progress bar."""

from __future__ import annotations

import io
from typing import Any

from sft_client.api.display import ProgressDisplay
from sft_client.api.progress_text import progress_facts, progress_line
from sft_client.api.results import (
    Checkpoint,
    failure_of,
    format_duration,
    parse_status,
    result_of,
    view_job,
)
from sft_core.progress import CheckpointInfo, FullStateInfo, Stage, TrainingProgress

SPEC = {
    "modelPath": "Qwen/Qwen2.5-7B-Instruct",
    "dataPath": "/data/train.jsonl",
    "numEpochs": 3,
    "effectiveBatchSize": 8,
    "learningRate": 2e-5,
    "maxSeqLen": 2048,
    "checkpoints": {"existingClaim": "ckpts", "path": "run1"},
}
T = "2026-11-27T10:00:00Z"


def job(status: dict[str, Any] | None = None, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": "qwen", "namespace": "ml", "creationTimestamp": T},
        "spec": spec if spec is not None else SPEC,
    }
    if status is not None:
        body["status"] = status
    return body


REPORTED = TrainingProgress(
    stage=Stage.TRAINING,
    epoch=2,
    num_epochs=3,
    samples_seen=150,
    total_samples=300,
    percent=50,
    last_loss="0.9123",
    throughput="12.50",
    eta_seconds=725,
    checkpoints=[
        CheckpointInfo(name="samples_100", path="hf_format/samples_100", samples=100, epoch=1, time=T),
    ],
    last_update_time=T,
).to_api()


def test_a_job_without_status_is_pending() -> None:
    view = view_job(job())
    assert (view.phase, view.num_epochs, view.checkpoints, view.finished) == ("Pending", 3, (), False)
    assert progress_line(view) == "ml/qwen Pending"


def test_the_reporters_progress_is_read_field_by_field() -> None:
    view = view_job(job({"phase": "Running", "nodes": "2/2", "progress": REPORTED}))
    assert (view.stage, view.epoch, view.num_epochs, view.samples, view.total_samples) == ("Training", 2, 3, 150, 300)
    assert (view.percent, view.loss, view.throughput, view.eta, view.updated) == (50.0, 0.9123, 12.5, "12m05s", T)
    assert view.checkpoints == (
        Checkpoint(
            name="samples_100",
            path="pvc://ckpts/run1/hf_format/samples_100",
            pod_path="/checkpoints/run1/hf_format/samples_100",
            samples=100,
            epoch=1,
            time=T,
        ),
    )
    assert progress_line(view) == (
        "ml/qwen Running Training epoch 2/3 samples 150/300 50% loss 0.9123 12.5 samples/s eta 12m05s "
        "checkpoints 1 (latest samples_100)"
    )


def test_checkpoints_on_an_operator_created_claim_use_its_name() -> None:
    spec = {**SPEC, "checkpoints": {"claim": {"size": "1Gi"}}}
    view = view_job(job({"phase": "Succeeded", "progress": REPORTED}, spec=spec))
    assert view.checkpoints[0].path == "pvc://qwen-checkpoints/hf_format/samples_100"  # naming.claim_name
    assert view.checkpoints[0].pod_path == "/checkpoints/hf_format/samples_100"


def test_an_object_the_models_refuse_still_shows_its_checkpoints() -> None:
    spec = {"checkpoints": {"existingClaim": "ckpts", "path": "run1"}}  # no training fields
    view = view_job(job({"phase": "Failed", "progress": REPORTED}, spec=spec))
    assert view.checkpoints[0].path == "pvc://ckpts/run1/hf_format/samples_100"
    spec = {"checkpoints": {"claim": {"size": "1Gi"}}}  # the claim's name is the operator's to say
    assert view_job(job({"progress": REPORTED}, spec=spec)).checkpoints[0].path == "/checkpoints/hf_format/samples_100"


def test_a_partial_progress_shows_what_it_carries_not_the_models_defaults() -> None:
    only_checkpoints = {"checkpoints": [{"name": "samples_8", "path": "hf_format/samples_8", "time": T}]}
    view = view_job(job({"phase": "Running", "progress": only_checkpoints}))
    assert (view.stage, view.epoch, view.samples, view.percent, view.loss, view.eta) == (None,) * 6
    assert view.num_epochs == 3  # the spec's
    assert progress_line(view) == "ml/qwen Running checkpoints 1 (latest samples_8)"


def test_names_the_status_schema_does_not_have_are_not_read() -> None:
    guessed = {
        "phase": "Running",
        "samplesSeen": 30,
        "totalSamples": 120,
        "percentComplete": 25,
        "progress": {"currentEpoch": 2, "progressPercent": 40, "loss": 1.5, "savedAt": T},
    }
    assert progress_line(view_job(job(guessed))) == "ml/qwen Running"


def test_a_progress_this_client_cannot_read_is_left_out_and_the_rest_kept() -> None:
    newer = {"phase": "Running", "nodes": "2/2", "progress": {"stage": "Distilling", "epoch": 1}}
    assert progress_line(view_job(job(newer))) == "ml/qwen Running"
    assert parse_status(newer).nodes == "2/2"
    assert parse_status({"phase": "Hibernating"}).phase.value == "Pending"


def test_the_full_state_a_resume_starts_from() -> None:
    progress = TrainingProgress(
        epoch=1,
        num_epochs=3,
        latest_full_state=FullStateInfo(name="epoch_0", path="full_state/epoch_0", epoch=1, samples=100, time=T),
    ).to_api()
    view = view_job(job({"phase": "Suspended", "readyNodes": 0, "progress": progress}))
    assert (view.phase, view.ready_nodes, view.resumes_from) == ("Suspended", 0, "full_state/epoch_0")


def test_result_carries_phase_checkpoints_and_last_metrics() -> None:
    result = result_of(job({"phase": "Succeeded", "progress": REPORTED}), manifest={"kind": "SFTJob"})
    assert (result.name, result.namespace, result.phase, result.succeeded) == ("qwen", "ml", "Succeeded", True)
    assert result.checkpoint_paths == ["pvc://ckpts/run1/hf_format/samples_100"]
    assert result.final_checkpoint is not None and result.final_checkpoint.name == "samples_100"
    assert result.metrics == {
        "stage": "Training",
        "epoch": 2,
        "num_epochs": 3,
        "samples_seen": 150,
        "total_samples": 300,
        "percent": 50.0,
        "loss": 0.9123,
        "throughput": 12.5,
    }
    assert result.manifest == {"kind": "SFTJob"}


def test_failure_reason_comes_from_the_failed_condition() -> None:
    status = {
        "phase": "Failed",
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "NodesPending", "message": "0/2", "lastTransitionTime": T},
            {
                "type": "Failed",
                "status": "True",
                "reason": "TooManyRestarts",
                "message": "exit 1: OOM",
                "lastTransitionTime": T,
            },
        ],
    }
    assert failure_of(parse_status(status)) == ("TooManyRestarts", "exit 1: OOM")
    view = view_job(job(status))
    assert (view.reason, view.message) == ("TooManyRestarts", "exit 1: OOM")
    assert progress_line(view) == "ml/qwen Failed reason TooManyRestarts: exit 1: OOM"
    invalid = {
        "phase": "Failed",
        "conditions": [
            {
                "type": "SpecValid",
                "status": "False",
                "reason": "InvalidSpec",
                "message": "spec.numEpochs: bad",
                "lastTransitionTime": T,
            },
        ],
    }
    assert failure_of(parse_status(invalid)) == ("InvalidSpec", "spec.numEpochs: bad")
    assert failure_of(parse_status({"phase": "Failed"})) == (None, None)


def test_durations() -> None:
    assert [format_duration(s) for s in (0, 59, 61, 3600, 3 * 3600 + 125)] == ["0s", "59s", "1m01s", "1h00m", "3h02m"]


def test_plain_progress_prints_a_line_per_change_only() -> None:
    out = io.StringIO()
    with ProgressDisplay(stream=out) as display:  # a StringIO is no terminal: plain lines
        display.note("Created SFTJob ml/qwen")
        for status in ({"phase": "Pending"}, {"phase": "Running"}, {"phase": "Running"}, {"phase": "Succeeded"}):
            display.update(job(status))
    assert out.getvalue().splitlines() == [
        "Created SFTJob ml/qwen",
        "ml/qwen Pending",
        "ml/qwen Running",
        "ml/qwen Succeeded",
    ]


def test_rich_progress_on_a_terminal_shows_the_facts() -> None:
    out = io.StringIO()
    # An explicit width: a StringIO has no terminal size, and the environment's may be anything.
    with ProgressDisplay(stream=out, rich_output=True, width=200) as display:
        display.update(job({"phase": "Running", "progress": REPORTED}))
    text = out.getvalue()
    detail = "Training  epoch 2/3  samples 150/300  loss 0.9123  12.5 samples/s  eta 12m05s  checkpoints 1 (latest samples_100)"
    assert "qwen Running" in text and " 50% " in text and detail in text, text


def test_the_bar_and_the_line_show_the_same_facts() -> None:
    view = view_job(job({"phase": "Running", "progress": REPORTED}))
    assert progress_facts(view, percent=False) == [
        "Training",
        "epoch 2/3",
        "samples 150/300",
        "loss 0.9123",
        "12.5 samples/s",
        "eta 12m05s",
        "checkpoints 1 (latest samples_100)",
    ]
    assert progress_line(view) == " ".join(["ml/qwen", "Running", *progress_facts(view)])


def test_a_narrow_terminal_cuts_the_details_not_the_bar() -> None:
    out = io.StringIO()
    with ProgressDisplay(stream=out, rich_output=True, width=80) as display:
        display.update(job({"phase": "Running", "progress": REPORTED}))
    (line,) = out.getvalue().splitlines()
    assert line.startswith("qwen Running ━") and "50% Training  epoch 2/3" in line and line.endswith("…")
    assert len(line) <= 80


def test_disabled_display_prints_nothing() -> None:
    out = io.StringIO()
    with ProgressDisplay(stream=out, enabled=False) as display:
        display.note("x")
        display.update(job({"phase": "Running"}))
    assert out.getvalue() == ""


def test_downloads_and_exports_are_progress_facts() -> None:
    from sft_client.api.results import format_bytes

    reported = {
        "stage": "Downloading",
        "epoch": 0,
        "numEpochs": 3,
        "samplesSeen": 0,
        "percent": 0,
        "downloads": [
            {
                "field": "spec.modelPath",
                "source": "hf://org/x",
                "state": "Downloading",
                "bytesDone": 1_234_567_890,
                "bytesTotal": 3_400_000_000,
            },
            {"field": "spec.dataPath", "source": "s3://b/t.jsonl", "state": "Done", "bytesDone": 10, "bytesTotal": 10},
        ],
        "exports": [
            {"checkpoint": "hf_format/samples_8", "uri": "s3://out/hf_format/samples_8", "bytes": 1, "time": T}
        ],
    }
    view = view_job(job({"phase": "Running", "progress": reported}))
    assert progress_facts(view, percent=False)[:2] == ["Downloading", "spec.modelPath 1.2 GB/3.4 GB"]
    assert progress_facts(view)[-1] == "exported 1 (latest s3://out/hf_format/samples_8)"
    assert [format_bytes(n) for n in (0, 999, 1000, 1_500_000, 7 * 10**12, 10**16)] == [
        "0 B",
        "999 B",
        "1.0 kB",
        "1.5 MB",
        "7.0 TB",
        "10000.0 TB",
    ]
