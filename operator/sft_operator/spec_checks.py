"""The spec and volume checks of an SFTJob's status: why the operator refused the spec
(SpecProblem, the SpecValid condition) and whether the checkpoint claim can serve the job
(VolumeCheck, the CheckpointVolume condition). children.py and publishing.py make them;
status.py writes them into the status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sft_models.models import AccessMode, Condition, ConditionType, Reason
from sft_operator.conditions import set_condition


@dataclass(frozen=True)
class SpecProblem:
    """Why the operator refused the current spec (reason: InvalidSpec or ImmutableFieldChanged)."""

    reason: Reason
    message: str


@dataclass(frozen=True)
class VolumeCheck:
    """Whether the checkpoint claim can serve this job (the CheckpointVolume condition)."""

    ok: bool
    reason: Reason
    message: str


def check_checkpoint_claim(
    nnodes: int, claim: dict[str, Any] | None, claim_name: str, created_by_other: str | None = None
) -> VolumeCheck:
    """``created_by_other``: the uid of the job that created the claim, when the job asks
    deleteWithJob of a claim it did not create (it keeps the claim: said in the message)."""
    if claim is None:
        return VolumeCheck(
            False, Reason.CLAIM_NOT_FOUND, f"PersistentVolumeClaim {claim_name} does not exist; pods wait for it"
        )
    modes = (claim.get("spec") or {}).get("accessModes") or []
    if nnodes > 1 and AccessMode.READ_WRITE_MANY.value not in modes:
        return VolumeCheck(
            False,
            Reason.CLAIM_NOT_READ_WRITE_MANY,
            f"PersistentVolumeClaim {claim_name} is {', '.join(modes) or 'without access modes'}; nnodes > 1 "
            "needs ReadWriteMany: every rank reads full_state/ when it resumes",
        )
    if created_by_other is not None:
        return VolumeCheck(
            True,
            Reason.CLAIM_FOUND,
            f"PersistentVolumeClaim {claim_name}, created by another SFTJob (uid {created_by_other}): kept "
            "when this job is deleted (spec.checkpoints.deleteWithJob applies only to a claim the job "
            "created)",
        )
    return VolumeCheck(True, Reason.CLAIM_FOUND, f"PersistentVolumeClaim {claim_name}")


def spec_condition(
    conditions: list[Condition], problem: SpecProblem | None, now: str, generation: int | None
) -> list[Condition]:
    """SpecValid: True, or False with the refusal (InvalidSpec, ImmutableFieldChanged) until the
    spec is fixed or reverted; also once training is over, so a refused edit never looks accepted."""
    if problem is None:
        return set_condition(conditions, ConditionType.SPEC_VALID.value, True, Reason.VALID.value, "", now, generation)
    return set_condition(
        conditions, ConditionType.SPEC_VALID.value, False, problem.reason.value, problem.message, now, generation
    )
