"""status.derive_status: phase and conditions from the children, as a pure function."""

from __future__ import annotations

from typing import Any

from sft_operator.models import Phase, Reason, SFTJobStatus, parse_job
from sft_operator.render import render_statefulset
from sft_operator.status import SpecProblem, VolumeCheck, check_checkpoint_claim, derive_status, set_condition

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def sts(nnodes: int = 2, suspend: bool = False) -> dict[str, Any]:
    job = parse_job(
        {
            "metadata": {"name": "j", "namespace": "ns", "uid": "u"},
            "spec": {
                "modelPath": "m", "dataPath": "d", "numEpochs": 1, "effectiveBatchSize": 8, "learningRate": 1e-5,
                "maxSeqLen": 64, "nnodes": nnodes, "suspend": suspend, "checkpoints": {"existingClaim": "c"},
            },
        }
    )
    return render_statefulset(job)


def pod(ordinal: int, phase: str = "Running", restarts: int = 0, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"j-{ordinal}"}
    if deleting:
        meta["deletionTimestamp"] = T0
    return {
        "metadata": meta,
        "status": {"phase": phase, "containerStatuses": [{"name": "trainer", "restartCount": restarts}]},
    }


def derive(current: SFTJobStatus | None = None, **kwargs: Any) -> SFTJobStatus:
    args: dict[str, Any] = dict(generation=1, nnodes=2, statefulset=sts(), pods=[], problem=None, volume=None, now=T0)
    args.update(kwargs)
    return derive_status(current, **args)


def conditions(status: SFTJobStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


def test_pending_until_every_pod_runs() -> None:
    status = derive(pods=[pod(0), pod(1, "Pending")])
    assert (status.phase, status.ready_nodes, status.total_nodes, status.nodes) == (Phase.PENDING, 1, 2, "1/2")
    assert conditions(status) == {
        "Ready": ("False", "NodesPending"),
        "SpecValid": ("True", "Valid"),
        "Suspended": ("False", "NotSuspended"),
    }
    assert status.start_time is None


def test_running_when_all_pods_run() -> None:
    status = derive(pods=[pod(0), pod(1, restarts=2)])
    assert (status.phase, status.nodes, status.restarts, status.start_time) == (Phase.RUNNING, "2/2", 2, T0)
    assert conditions(status)["Ready"] == ("True", "AllNodesRunning")


def test_pods_being_deleted_or_beyond_the_topology_do_not_count() -> None:
    status = derive(pods=[pod(0), pod(1, deleting=True), pod(2)])
    assert (status.phase, status.ready_nodes) == (Phase.PENDING, 1)


def test_no_statefulset_yet_is_pending() -> None:
    assert derive(statefulset=None, pods=[pod(0), pod(1)]).phase is Phase.PENDING


def test_suspended_follows_the_statefulset() -> None:
    status = derive(statefulset=sts(suspend=True), pods=[pod(0), pod(1)])
    assert status.phase is Phase.SUSPENDED
    assert conditions(status)["Suspended"] == ("True", "Suspended")
    assert conditions(status)["Ready"] == ("False", "Suspended")


def test_invalid_spec_without_children_is_failed() -> None:
    problem = SpecProblem(Reason.INVALID_SPEC, "spec.extraArgs.foo: unknown instructlab-training argument")
    status = derive(statefulset=None, problem=problem, nnodes=3)
    assert (status.phase, status.nodes) == (Phase.FAILED, "0/3")
    assert conditions(status) == {
        "Failed": ("True", "InvalidSpec"),
        "Ready": ("False", "InvalidSpec"),
        "SpecValid": ("False", "InvalidSpec"),
    }
    assert next(c for c in status.conditions if c.type == "SpecValid").message == problem.message
    fixed = derive(status, now=T1)
    assert fixed.phase is Phase.PENDING
    assert conditions(fixed)["Failed"] == ("False", "Valid")


def test_refused_change_keeps_the_running_job_and_its_topology() -> None:
    running = derive(pods=[pod(0), pod(1)])
    problem = SpecProblem(Reason.IMMUTABLE_FIELD_CHANGED, "spec.nnodes: immutable once the job is created")
    status = derive(running, nnodes=4, pods=[pod(0), pod(1)], problem=problem, now=T1)
    assert (status.phase, status.total_nodes) == (Phase.RUNNING, 2)
    assert conditions(status)["SpecValid"] == ("False", "ImmutableFieldChanged")


def test_same_inputs_same_status_and_transition_times_only_move_on_flips() -> None:
    first = derive(pods=[pod(0), pod(1)])
    again = derive(first, pods=[pod(0), pod(1)], now=T1)
    assert again == first  # nothing changed: nothing to patch
    flipped = derive(first, pods=[pod(0)], now=T1)
    times = {c.type: c.last_transition_time for c in flipped.conditions}
    assert times == {"Ready": T1, "SpecValid": T0, "Suspended": T0}
    assert flipped.start_time == T0  # a restart keeps the first start


def test_volume_condition_is_kept_when_not_rechecked() -> None:
    bad = VolumeCheck(False, "NotReadWriteMany", "x")
    status = derive(volume=bad)
    assert conditions(status)["CheckpointVolume"] == ("False", "NotReadWriteMany")
    assert conditions(derive(status, now=T1))["CheckpointVolume"] == ("False", "NotReadWriteMany")


def test_checkpoint_claim_checks() -> None:
    assert check_checkpoint_claim(2, None, "c").reason == "ClaimNotFound"
    rwo = {"spec": {"accessModes": ["ReadWriteOnce"]}}
    assert check_checkpoint_claim(1, rwo, "c").ok
    check = check_checkpoint_claim(2, rwo, "c")
    assert (check.ok, check.reason) == (False, "NotReadWriteMany") and "ReadWriteMany" in check.message
    assert check_checkpoint_claim(2, {"spec": {"accessModes": ["ReadWriteMany"]}}, "c").ok


def test_set_condition_keeps_others_sorted() -> None:
    conds = set_condition([], "B", True, "r", "", T0, 1)
    conds = set_condition(conds, "A", False, "r", "m", T0, 1)
    assert [c.type for c in conds] == ["A", "B"]
    assert conds[1].message is None  # empty messages are left out
