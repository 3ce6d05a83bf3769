"""After run_training returns normally: finished, or preempted after saving?

run_training returns normally in both cases (on-demand checkpointing makes the workers save and
exit 0). A preemption always leaves a new mid-epoch full state; a finished run does not.
"""

from __future__ import annotations

from enum import Enum

from sft_operator.checkpoints import CheckpointTree, FullState


class Outcome(str, Enum):
    FINISHED = "finished"
    PREEMPTED = "preempted"
    UNFINISHED = "unfinished"  # returned normally, yet neither: treat as a failure


def already_finished(tree: CheckpointTree, num_epochs: int) -> bool:
    """The epoch-end full state of the last epoch exists (only knowable with epoch full states)."""
    latest = tree.latest_full_state
    return (latest is not None and latest.stable
            and latest.metadata.current_epoch >= num_epochs - 1)


def decide_outcome(before: FullState | None, after: CheckpointTree, num_epochs: int,
                   epoch_full_states: bool) -> Outcome:
    """``before``: the latest complete full state when the run started; ``epoch_full_states``:
    whether full states are saved at each epoch end (checkpoint_at_epoch and
    accelerate_full_state_at_epoch), which makes "finished" checkable."""
    latest = after.latest_full_state
    if latest is not None and latest.metadata.mid_epoch and latest != before:
        return Outcome.PREEMPTED
    if not epoch_full_states:
        return Outcome.FINISHED
    return Outcome.FINISHED if already_finished(after, num_epochs) else Outcome.UNFINISHED
