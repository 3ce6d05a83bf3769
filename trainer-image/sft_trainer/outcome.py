"""After run_training returns normally: finished, or preempted after saving?

run_training returns normally in both cases (on-demand checkpointing makes the workers save and
exit 0). A preemption always leaves a new mid-epoch full state; a finished run does not.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from sft_core.checkpoints import HF_FORMAT_DIR, CheckpointTree, CompletionMarker, FullState


class Outcome(str, Enum):
    FINISHED = "finished"
    PREEMPTED = "preempted"
    UNFINISHED = "unfinished"  # returned normally, yet neither: treat as a failure


def already_finished(tree: CheckpointTree, num_epochs: int) -> bool:
    """The epoch-end full state of the last epoch exists (only knowable with epoch full states)."""
    latest = tree.latest_full_state
    return (
        latest is not None
        and latest.stable
        and latest.metadata is not None
        and latest.metadata.current_epoch >= num_epochs - 1
    )


def decide_outcome(
    before: FullState | None, after: CheckpointTree, num_epochs: int, epoch_full_states: bool
) -> Outcome:
    """``before``: the latest complete full state when the run started; ``epoch_full_states``:
    whether full states are saved at each epoch end (checkpoint_at_epoch and
    accelerate_full_state_at_epoch), which makes "finished" checkable."""
    latest = after.latest_full_state
    if latest is not None and latest.metadata is not None and latest.metadata.mid_epoch and latest != before:
        return Outcome.PREEMPTED
    if not epoch_full_states:
        return Outcome.FINISHED
    return Outcome.FINISHED if already_finished(after, num_epochs) else Outcome.UNFINISHED


def completion_marker(tree: CheckpointTree, num_epochs: int, now: datetime) -> CompletionMarker:
    """What COMPLETED records: the final servable checkpoint and the samples trained."""
    final = tree.latest_hf_checkpoint
    latest = tree.latest_full_state
    # The furthest either got: a full state saved mid-run (OSFT keeps its on-demand saves, and
    # so does SFT without epoch full states) is behind the final checkpoint.
    samples = max(
        latest.metadata.samples_seen if latest is not None and latest.metadata is not None else 0,
        final.samples if final is not None and final.samples is not None else 0,
    )
    return CompletionMarker(
        finished_at=now,
        num_epochs=num_epochs,
        samples_seen=samples,
        final_checkpoint=f"{HF_FORMAT_DIR}/{final.name}" if final else None,
    )
