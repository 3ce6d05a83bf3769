"""Status of jobs with remote sources and an export target: Downloading, a download that fails
for good or retries, and Succeeded only once the final checkpoint is exported."""

from __future__ import annotations

from typing import Any

from test_status import T1, T2, conditions, derive, pod, progress, terminated

from sft_core.progress import CheckpointExport, SourceDownload, Stage
from sft_models.models import Phase

URI = "s3://out/runs"


def exported(*names: str) -> list[CheckpointExport]:
    return [CheckpointExport(checkpoint=f"hf_format/{n}", uri=f"{URI}/hf_format/{n}", bytes=10, time=T1) for n in names]


def transfer_pod(ordinal: int, state: dict[str, Any]) -> dict[str, Any]:
    containers = [
        {"name": "trainer", "restartCount": 0, "state": {"running": {}}},
        {"name": "reporter", "restartCount": 0, "state": {"running": {}}},
        {"name": "transfer", "restartCount": 0, "state": state},
    ]
    return {"metadata": {"name": f"j-{ordinal}"}, "status": {"phase": "Running", "containerStatuses": containers}}


def test_completed_training_waits_for_its_final_export() -> None:
    done = progress(Stage.COMPLETED, 80, "samples_80").model_copy(update={"exports": exported("samples_40")})
    waiting = derive(pods=[pod(0), pod(1)], progress=done, max_restarts=3, now=T1, export_uri=URI)
    assert waiting.phase is Phase.RUNNING and not waiting.training_over
    assert conditions(waiting)["Exported"] == ("False", "ExportPending")
    assert next(c for c in waiting.conditions if c.type == "Exported").message == (
        "training is over; uploading the final checkpoint hf_format/samples_80"
    )
    uploaded = done.model_copy(update={"exports": exported("samples_40", "samples_80")})
    finished = derive(waiting, pods=[pod(0), pod(1)], progress=uploaded, max_restarts=3, now=T2, export_uri=URI)
    assert finished.phase is Phase.SUCCEEDED and finished.training_over
    assert conditions(finished)["Exported"] == ("True", "Exported")
    assert next(c for c in finished.conditions if c.type == "Complete").message == (
        "trained 1 epochs; final checkpoint hf_format/samples_80, exported to s3://out/runs/hf_format/samples_80"
    )


def test_without_an_export_target_completion_is_success_at_once() -> None:
    done = derive(pods=[pod(0), pod(1)], progress=progress(Stage.COMPLETED, 80, "samples_80"), max_restarts=3, now=T1)
    assert done.phase is Phase.SUCCEEDED and "Exported" not in conditions(done)


def test_a_failing_upload_is_its_own_condition_and_the_job_keeps_running() -> None:
    failing = progress(Stage.COMPLETED, 80, "samples_80").model_copy(
        update={"export_error": "hf_format/samples_80: AccessDenied (403)"}
    )
    status = derive(pods=[pod(0), pod(1)], progress=failing, max_restarts=3, now=T1, export_uri=URI)
    assert status.phase is Phase.RUNNING
    assert conditions(status)["Exported"] == ("False", "ExportFailing")
    assert next(c for c in status.conditions if c.type == "Exported").message == (
        "retrying with backoff: hf_format/samples_80: AccessDenied (403)"
    )


def test_a_download_that_cannot_succeed_fails_the_job_with_the_sidecars_line() -> None:
    line = "spec.modelPath (hf://org/x@main): 401 Unauthorized: the token in Secret hf-token cannot read org/x"
    pods = [transfer_pod(0, terminated(2, T1, message=line + "\n")), pod(1)]
    failed = derive(pods=pods, max_restarts=3, now=T1)
    assert failed.phase is Phase.FAILED and failed.training_over
    assert conditions(failed)["Failed"] == ("True", "DownloadFailed")
    assert next(c for c in failed.conditions if c.type == "Failed").message == line


def test_a_retried_download_makes_ready_false_with_the_reason() -> None:
    downloading = progress(Stage.DOWNLOADING, 0, None).model_copy(
        update={
            "downloads": [
                SourceDownload(
                    field="spec.dataPath",
                    source="s3://bkt/train.jsonl",
                    state="Downloading",
                    bytes_done=10,
                    bytes_total=100,
                    error="connection reset by peer (attempt 2 of 5)",
                )
            ]
        }
    )
    status = derive(pods=[pod(0), pod(1)], progress=downloading, max_restarts=3, now=T1)
    assert status.phase is Phase.RUNNING
    assert conditions(status)["Ready"] == ("False", "DownloadRetrying")
    assert next(c for c in status.conditions if c.type == "Ready").message == (
        "2/2 pods running; spec.dataPath (s3://bkt/train.jsonl): connection reset by peer (attempt 2 of 5); retrying"
    )


def test_the_summary_shows_downloads_then_exports() -> None:
    from sft_core.checkpoints import CheckpointTree
    from sft_core.progress import summarize_progress
    from sft_core.sources import DownloadState, TransferState

    empty = CheckpointTree(
        root="/c",
        hf_checkpoints=[],
        full_states=[],
        stray_full_state_entries=[],
        completion=None,
        data_ready=None,
        samples_per_epoch=None,
    )
    report = TransferState.model_validate(
        {
            "downloads": [
                {
                    "field": "spec.modelPath",
                    "source": "hf://org/x@main",
                    "state": "Done",
                    "bytesDone": 300,
                    "bytesTotal": 300,
                    "files": 4,
                    "revision": "0123abcd",
                    "cached": True,
                },
                {
                    "field": "spec.dataPath",
                    "source": "s3://bkt/train.jsonl",
                    "state": "Downloading",
                    "bytesDone": 5,
                    "bytesTotal": 50,
                },
            ],
            "exports": [
                {
                    "checkpoint": "hf_format/samples_8",
                    "uri": "s3://out/hf_format/samples_8",
                    "bytes": 300,
                    "exportedAt": "2026-12-07T12:00:00Z",
                }
            ],
            "exportError": None,
        }
    )
    summary = summarize_progress(
        empty, num_epochs=1, last_step=None, last_totals=None, runs=[], data_dir_exists=False, transfers=report
    ).to_api()
    assert summary["stage"] == "Downloading"
    assert summary["downloads"] == [
        {
            "field": "spec.modelPath",
            "source": "hf://org/x@main",
            "state": "Done",
            "bytesDone": 300,
            "bytesTotal": 300,
            "files": 4,
            "revision": "0123abcd",
            "cached": True,
        },
        {
            "field": "spec.dataPath",
            "source": "s3://bkt/train.jsonl",
            "state": "Downloading",
            "bytesDone": 5,
            "bytesTotal": 50,
            "cached": False,
        },
    ]
    assert summary["exports"] == [
        {
            "checkpoint": "hf_format/samples_8",
            "uri": "s3://out/hf_format/samples_8",
            "bytes": 300,
            "time": "2026-12-07T12:00:00Z",
        }
    ]
    done = report.model_copy(
        update={"downloads": [d.model_copy(update={"state": DownloadState.DONE}) for d in report.downloads]}
    )
    after = summarize_progress(
        empty, num_epochs=1, last_step=None, last_totals=None, runs=[], data_dir_exists=False, transfers=done
    )
    assert after.stage is Stage.INITIALIZING
