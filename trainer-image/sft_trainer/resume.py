"""Make instructlab-training's resume exact, and record where each run starts.

Upstream (0.16.2) saves an on-demand (mid-epoch) full state with ``global_step`` counted from 1
at the start of the *run* that saved it, and on resume restarts ``global_step`` at 1 at the
saved epoch and skips batches while ``global_step <= last_step``. That is right only when the
saving run started at epoch 0. Saved at epoch 5, global_step 22, 4 steps per epoch (a run that
started at epoch 0): upstream resumes at epoch 10, step 23 and never trains epochs 5-9. Also,
a save taken before the step's optimizer update (the usual case: the trigger is checked before
each forward/backward) resumes after that step, skipping one batch.

Before every run, node 0's launcher rewrites such metadata so that ``global_step`` is the number
of batches of ``current_epoch`` already applied; upstream then skips exactly those. It knows the
saving run's start from its RunRecord and its log lines from the metrics log (from the record's
offset): steps per epoch from the run's totals line, and whether the interrupted step was applied
from samples_seen (the saved value exceeds the last logged one only if it was).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from sft_core import checkpoints
from sft_core.checkpoints import FullState, FullStateMetadata, MetricsLog, RunRecord

from .errors import TrainingFailed

log = logging.getLogger(__name__)


class ResumePoint(BaseModel):
    model_config = ConfigDict(frozen=True)

    start_epoch: int
    steps_into_epoch: int
    start_samples_seen: int
    resumed_from: str | None


def steps_per_epoch(run_log: MetricsLog) -> int | None:
    if run_log.totals:
        return run_log.totals[-1].num_batches
    counts = [step.num_epoch_steps for step in run_log.steps if step.num_epoch_steps]
    return counts[-1] if counts else None


def normalize_mid_epoch(metadata: FullStateMetadata, run: RunRecord | None, run_log: MetricsLog) -> FullStateMetadata:
    """The metadata upstream must resume from to continue exactly where the saving run stopped.

    ``run`` is the record of the run that saved it (None: assume a run from epoch 0, which is
    upstream's own assumption), ``run_log`` that run's metrics-log lines.
    """
    if metadata.global_step is None or metadata.normalized:  # global_step None: not mid_epoch
        return metadata
    epoch, global_step, samples = (metadata.current_epoch, metadata.global_step, metadata.samples_seen)
    start_epoch = run.start_epoch if run else 0
    start_samples = run.start_samples_seen if run else 0
    if epoch < start_epoch:
        raise TrainingFailed(
            f"mid-epoch full state at epoch {epoch} predates its run's start "
            f"epoch {start_epoch}; cannot resume it exactly"
        )
    per_epoch = steps_per_epoch(run_log)
    if epoch > start_epoch and per_epoch is None:
        raise TrainingFailed(
            f"mid-epoch full state at epoch {epoch}: the metrics log has no "
            "steps-per-epoch for its run; cannot resume it exactly"
        )
    # 1-based index, within `epoch`, of the step during or after which the save happened.
    position = global_step - (epoch - start_epoch) * (per_epoch or 0)
    if position < 1 or (per_epoch is not None and position > per_epoch):
        raise TrainingFailed(
            f"mid-epoch full state (epoch {epoch}, global_step {global_step}) "
            f"does not fit its run (start epoch {start_epoch}, "
            f"{per_epoch} steps per epoch)"
        )
    last_logged = run_log.steps[-1] if run_log.steps else None
    if last_logged is not None and last_logged.step != global_step - 1:
        # A lost log line: samples cannot tell; keep upstream's reading (step applied).
        log.warning(
            "metrics log's last step is %d, expected %d; assuming the step was applied",
            last_logged.step,
            global_step - 1,
        )
        applied = True
    else:
        samples_before = last_logged.samples_seen if last_logged else start_samples
        applied = samples > samples_before
    done = position if applied else position - 1
    return metadata.model_copy(
        update={
            "global_step": done,
            "steps_into_epoch": done,
            "original_global_step": global_step,
            "step_applied": applied,
        }
    )


def resume_point(state: FullState | None, steps_per_epoch_hint: int | None = None) -> ResumePoint:
    """Where upstream's load_latest_full_state will start from ``state`` (already normalized).
    mini-trainer's states (OSFT) need no rewrite (its worker resumes exactly, osft_worker): the
    steps into the epoch follow from ``steps_per_epoch_hint`` (its metrics log), 0 unknown."""
    if state is None or state.metadata is None:
        return ResumePoint(start_epoch=0, steps_into_epoch=0, start_samples_seen=0, resumed_from=None)
    metadata = state.metadata
    if state.directory == checkpoints.OSFT_FULL_STATE_DIR:
        if metadata.global_step is None:  # read_osft_state sets it from every save's "step"
            raise ValueError(f"{state.name}: mini-trainer's state has no step")
        done = metadata.global_step - metadata.current_epoch * (steps_per_epoch_hint or 0)
        return ResumePoint(
            start_epoch=metadata.current_epoch,
            steps_into_epoch=done if steps_per_epoch_hint else 0,
            start_samples_seen=metadata.samples_seen,
            resumed_from=state.path,
        )
    if metadata.mid_epoch:
        if not metadata.normalized:
            raise ValueError(f"{state.name}: normalize mid-epoch metadata before resuming")
        return ResumePoint(
            start_epoch=metadata.current_epoch,
            steps_into_epoch=metadata.steps_into_epoch,
            start_samples_seen=metadata.samples_seen,
            resumed_from=state.name,
        )
    return ResumePoint(
        start_epoch=metadata.current_epoch + 1,
        steps_into_epoch=0,
        start_samples_seen=metadata.samples_seen,
        resumed_from=state.name,
    )


def _write_metadata(path: Path, metadata: FullStateMetadata) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(metadata.to_pickle_dict(), tmp)
    os.replace(tmp, path)


def prepare_resume(root: Path, *, now: Callable[[], datetime]) -> RunRecord:
    """Node 0, before run_training, while no training process runs: set aside what would break
    upstream's resume, make the latest mid-epoch state exact, and append this run's record."""
    root = Path(root)
    tree = checkpoints.scan_checkpoints(root)
    in_the_way = [state.name for state in tree.incomplete_full_states if state.directory == checkpoints.FULL_STATE_DIR]
    in_the_way += tree.stray_full_state_entries
    osft_in_the_way = [
        state.name for state in tree.incomplete_full_states if state.directory == checkpoints.OSFT_FULL_STATE_DIR
    ]
    if in_the_way or osft_in_the_way:
        moved = checkpoints.set_aside(root, in_the_way, now=now())
        # mini-trainer ignores them, but its next save at the same step would write into one
        moved += checkpoints.set_aside(root, osft_in_the_way, now=now(), directory=checkpoints.OSFT_FULL_STATE_DIR)
        log.warning("moved incomplete or foreign full_state entries aside: %s", moved)
        tree = checkpoints.scan_checkpoints(root)
    latest = tree.latest_full_state
    osft = latest is not None and latest.directory == checkpoints.OSFT_FULL_STATE_DIR
    if (
        latest is not None
        and not osft
        and latest.metadata is not None
        and latest.metadata.mid_epoch
        and not latest.metadata.normalized
    ):
        runs = checkpoints.read_run_records(root)
        run = runs[-1] if runs else None
        run_log = checkpoints.read_metrics_log(
            checkpoints.metrics_log_path(root), offset=run.metrics_log_offset if run else 0
        )
        normalized = normalize_mid_epoch(latest.metadata, run, run_log)
        _write_metadata(
            root / checkpoints.FULL_STATE_DIR / latest.name / checkpoints.TRAINING_METADATA_FILE, normalized
        )
        log.info(
            "made resume from %s exact: epoch %d, %d steps into it (upstream would skip %d)",
            latest.name,
            normalized.current_epoch,
            normalized.steps_into_epoch,
            normalized.original_global_step,
        )
        latest = checkpoints.scan_checkpoints(root).latest_full_state
    metrics_path = checkpoints.metrics_log_path(root)
    hint = None
    if osft:
        counts = [
            step.num_epoch_steps for step in checkpoints.read_metrics_log(metrics_path).steps if step.num_epoch_steps
        ]
        hint = counts[-1] if counts else None
    point = resume_point(latest, hint)
    record = RunRecord(
        started_at=now(),
        start_epoch=point.start_epoch,
        steps_into_epoch=point.steps_into_epoch,
        start_samples_seen=point.start_samples_seen,
        metrics_log_offset=metrics_path.stat().st_size if metrics_path.exists() else 0,
        resumed_from=point.resumed_from,
    )
    checkpoints.append_run_record(root, record)
    return record
