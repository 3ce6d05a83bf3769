"""Whether training is over, and how: the volume's completion marker (and, with spec.export, the
final checkpoint's upload), or the trainer's and the transfer sidecar's exits (a rejected
configuration, failures past spec.maxRestarts). Pure.
"""

from __future__ import annotations

import re
from typing import Any

from sft_core import contract
from sft_core.checkpoints import HF_FORMAT_DIR
from sft_core.progress import CheckpointExport, Stage, TrainingProgress
from sft_models.models import MAPPED_TRAINING_ARGS, Phase, Reason
from sft_operator.pod_facts import last_trainer_termination

RENDEZVOUS_CONFLICT_MESSAGE = "another job holds this job's rendezvous (spec.rdzvPort)"

_TRAINING_ARG = re.compile(r"\btrainingArgs\.([a-z_]+)")


def name_spec_fields(message: str) -> str:
    """The launcher names TrainingArgs keys (``trainingArgs.data_path``); users wrote the spec:
    add the spec field each key comes from (``spec.dataPath (trainingArgs.data_path)``)."""

    def spec_name(match: re.Match[str]) -> str:
        key = match.group(1)
        source = MAPPED_TRAINING_ARGS.get(key)
        field = f"spec.{source}" if source else f"spec.extraArgs.{key}"
        return f"{field} ({match.group(0)})"

    return _TRAINING_ARG.sub(spec_name, message)


def training_verdict(
    progress: TrainingProgress | None,
    pods: list[dict[str, Any]],
    restarts: int,
    max_restarts: int | None,
    export_uri: str | None = None,
) -> tuple[Phase, Reason, str] | None:
    """Whether training is over, from the volume (completion) and the trainer's exits: the
    phase, reason and message it ends with, or None while it goes on. With ``export_uri`` the
    job Succeeds only once its final checkpoint is exported there."""
    if progress is not None and progress.stage is Stage.COMPLETED:
        message = f"trained {progress.num_epochs} epochs"
        if progress.latest_checkpoint:
            message += f"; final checkpoint hf_format/{progress.latest_checkpoint}"
        if export_uri is not None:
            final = final_export(progress)
            if final is None:
                return None  # the transfer sidecar still uploads it (condition Exported says how it goes)
            message += f", exported to {final.uri}"
        return Phase.SUCCEEDED, Reason.TRAINING_COMPLETED, message
    fetch = last_trainer_termination(pods, container=contract.TRANSFER_CONTAINER)
    if fetch is not None and fetch.exit_code == contract.EXIT_BAD_CONFIG:
        # The transfer sidecar's one line names the field and the source.
        return Phase.FAILED, Reason.DOWNLOAD_FAILED, fetch.message.strip() or fetch.describe()
    termination = last_trainer_termination(pods)
    if termination is not None and termination.exit_code == contract.EXIT_BAD_CONFIG:
        return (
            Phase.FAILED,
            Reason.CONFIG_REJECTED,
            "the launcher rejected its configuration, a retry cannot help: " + name_spec_fields(termination.describe()),
        )
    if max_restarts is not None and restarts > max_restarts:
        failure = last_trainer_termination(pods, failures_only=True)
        last = failure.describe() if failure is not None else "no termination recorded"
        counted = f"the trainer failed {restarts} times (spec.maxRestarts: {max_restarts}; preemptions do not count)"
        if failure is not None and failure.exit_code == contract.EXIT_RENDEZVOUS_CONFLICT:
            return Phase.FAILED, Reason.RENDEZVOUS_CONFLICT, f"{RENDEZVOUS_CONFLICT_MESSAGE}; {counted}; last: {last}"
        return Phase.FAILED, Reason.TOO_MANY_RESTARTS, f"{counted}; last: {last}"
    return None


def final_export(progress: TrainingProgress) -> CheckpointExport | None:
    """The export of the job's final checkpoint (its newest hf_format one), once uploaded."""
    if not progress.latest_checkpoint:
        return None
    wanted = f"{HF_FORMAT_DIR}/{progress.latest_checkpoint}"
    return next((e for e in progress.exports or [] if e.checkpoint == wanted), None)


def exported_condition(progress: TrainingProgress | None) -> tuple[bool, Reason, str] | None:
    """Condition Exported (spec.export): None until there is something to say."""
    if progress is None:
        return None
    exports = progress.exports or []
    if progress.stage is Stage.COMPLETED and final_export(progress) is not None:
        final = final_export(progress)
        assert final is not None
        return True, Reason.EXPORTED, f"{len(exports)} checkpoint(s) exported; final: {final.uri}"
    if progress.export_error:
        return False, Reason.EXPORT_FAILING, f"retrying with backoff: {progress.export_error}"
    if progress.stage is Stage.COMPLETED:
        return (
            False,
            Reason.EXPORT_PENDING,
            f"training is over; uploading the final checkpoint hf_format/{progress.latest_checkpoint}",
        )
    if exports:
        return False, Reason.EXPORT_PENDING, f"{len(exports)} checkpoint(s) exported; newest: {exports[-1].uri}"
    return None
