"""status.derive_status: phase and conditions from the children, as a pure function."""

from __future__ import annotations

from typing import Any

from sft_core.progress import CheckpointInfo, Stage, TrainingProgress
from sft_models.models import Phase, Reason, SFTJobStatus, parse_job
from sft_operator.conditions import set_condition
from sft_operator.pod_facts import Blocker, Termination, last_trainer_termination, pod_blocker, ranks_left_behind
from sft_operator.render import render_statefulset
from sft_operator.run_policies import (
    RunPolicy,
    group_restart_plan,
    held_back,
    restart_backoff_s,
    stall_restart_plan,
    stalled,
)
from sft_operator.spec_checks import SpecProblem, VolumeCheck, check_checkpoint_claim
from sft_operator.status import derive_status, phase_event_message

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def sts(nnodes: int = 2, suspend: bool = False) -> dict[str, Any]:
    job = parse_job(
        {
            "metadata": {"name": "j", "namespace": "ns", "uid": "u"},
            "spec": {
                "modelPath": "/m",
                "dataPath": "/d",
                "numEpochs": 1,
                "effectiveBatchSize": 8,
                "learningRate": 1e-5,
                "maxSeqLen": 64,
                "nnodes": nnodes,
                "suspend": suspend,
                "checkpoints": {"existingClaim": "c"},
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


POLICY_FIELDS = (
    "nnodes",
    "max_restarts",
    "active_deadline_s",
    "startup_timeout_s",
    "stall_timeout_s",
    "ttl_s",
    "export_uri",
)


def run_policy(**fields: Any) -> RunPolicy:
    """A RunPolicy for 2 nodes with every bound off, but those given."""
    return RunPolicy(**{"nnodes": 2, **{name: None for name in POLICY_FIELDS[1:]}, **fields})


def derive(current: SFTJobStatus | None = None, **kwargs: Any) -> SFTJobStatus:
    """derive_status's status; the RunPolicy's fields may be given as keywords too."""
    policy = run_policy(**{name: kwargs.pop(name) for name in POLICY_FIELDS if name in kwargs})
    args: dict[str, Any] = dict(
        generation=1, policy=policy, statefulset=sts(), pods=[], problem=None, volume=None, now=T0
    )
    args.update(kwargs)
    return derive_status(current, **args).status


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
    status = derive(pods=[pod(0), trainer_pod(1, 1, last=terminated(1, T0))])
    assert (status.phase, status.nodes, status.restarts, status.start_time) == (Phase.RUNNING, "2/2", 1, T0)
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
    bad = VolumeCheck(False, Reason.CLAIM_NOT_READ_WRITE_MANY, "x")
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


# --- completion and failure ---------------------------------------------------------------------

T2, T3 = "2026-01-01T00:10:00Z", "2026-01-01T00:15:00Z"


def progress(stage: Stage = Stage.TRAINING, samples: int = 40, latest: str | None = "samples_40") -> TrainingProgress:
    checkpoints = (
        []
        if latest is None
        else [CheckpointInfo(name=latest, path=f"hf_format/{latest}", samples=samples, epoch=1, time=T1)]
    )
    percent = 100 if stage is Stage.COMPLETED else 50
    return TrainingProgress(
        stage=stage,
        epoch=1,
        num_epochs=1,
        epoch_display="1/1",
        samples_seen=samples,
        total_samples=80,
        percent=percent,
        percent_display=f"{percent}%",
        last_loss="0.1234",
        checkpoints=checkpoints,
        latest_checkpoint=latest,
        last_update_time=T1,
    )


def trainer_pod(
    ordinal: int,
    restarts: int = 0,
    *,
    phase: str = "Running",
    state: dict[str, Any] | None = None,
    last: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A pod whose trainer container ended as ``state``/``last`` say (the reporter never counts)."""
    trainer: dict[str, Any] = {"name": "trainer", "restartCount": restarts, "state": state or {"running": {}}}
    if last is not None:
        trainer["lastState"] = last
    reporter = {"name": "reporter", "restartCount": 7, "state": {"terminated": {"exitCode": 2, "finishedAt": T3}}}
    return {"metadata": {"name": f"j-{ordinal}"}, "status": {"phase": phase, "containerStatuses": [trainer, reporter]}}


def terminated(exit_code: int, finished_at: str, reason: str = "Error", message: str = "") -> dict[str, Any]:
    return {"terminated": {"exitCode": exit_code, "reason": reason, "message": message, "finishedAt": finished_at}}


def test_completed_progress_is_succeeded() -> None:
    running = derive(pods=[pod(0), pod(1)], progress=progress(), max_restarts=3)
    assert running.phase is Phase.RUNNING and running.progress == progress()
    done = derive(
        running, pods=[pod(0), pod(1)], progress=progress(Stage.COMPLETED, 80, "samples_80"), now=T1, max_restarts=3
    )
    message = "trained 1 epochs; final checkpoint hf_format/samples_80"
    api = done.to_api()
    assert api["conditions"] == [
        {
            "type": "Complete",
            "status": "True",
            "reason": "TrainingCompleted",
            "message": message,
            "lastTransitionTime": T1,
            "observedGeneration": 1,
        },
        {
            "type": "Failed",
            "status": "False",
            "reason": "TrainingCompleted",
            "message": message,
            "lastTransitionTime": T1,
            "observedGeneration": 1,
        },
        {
            "type": "Ready",
            "status": "False",
            "reason": "Finished",
            "message": "training is over; pods scaled to 0",
            "lastTransitionTime": T1,
            "observedGeneration": 1,
        },
        {"type": "SpecValid", "status": "True", "reason": "Valid", "lastTransitionTime": T0, "observedGeneration": 1},
        {
            "type": "Suspended",
            "status": "False",
            "reason": "NotSuspended",
            "lastTransitionTime": T0,
            "observedGeneration": 1,
        },
    ]
    assert {k: v for k, v in api.items() if k not in ("conditions", "progress")} == {
        "phase": "Succeeded",
        "observedGeneration": 1,
        "readyNodes": 2,
        "totalNodes": 2,
        "nodes": "2/2",
        "startTime": T0,
        "completionTime": T1,
        "restarts": 0,
        "preemptions": 0,
        "nodeRestarts": [],
        "stallRestarts": 0,
    }
    assert api["progress"]["stage"] == "Completed" and api["progress"]["latestCheckpoint"] == "samples_80"
    assert done.training_over


def test_completed_without_a_checkpoint_says_so() -> None:
    done = derive(progress=progress(Stage.COMPLETED, 80, latest=None))
    assert next(c for c in done.conditions if c.type == "Complete").message == "trained 1 epochs"


def test_progress_is_kept_when_none_is_given() -> None:
    first = derive(pods=[pod(0), pod(1)], progress=progress())
    assert derive(first, pods=[pod(0), pod(1)], now=T1).progress == progress()


def test_training_over_is_sticky_only_facts_move() -> None:
    done = derive(pods=[pod(0), pod(1)], progress=progress(Stage.COMPLETED, 80, "samples_80"), now=T1)
    # The StatefulSet is scaled to 0 (it looks suspended), pods go away or restart, the reporter
    # publishes an older summary: the phase, conditions and completion time stay.
    later_progress = progress(Stage.TRAINING, 60, "samples_60")
    crashed = trainer_pod(0, 9, phase="Pending", last=terminated(1, T2))
    later = derive(
        done,
        statefulset=sts(suspend=True),
        pods=[crashed],
        progress=later_progress,
        now=T2,
        max_restarts=0,
        generation=2,
        problem=SpecProblem(Reason.IMMUTABLE_FIELD_CHANGED, "spec.nnodes: immutable"),
    )
    refused = {
        "type": "SpecValid",
        "status": "False",
        "reason": "ImmutableFieldChanged",
        "message": "spec.nnodes: immutable",
        "lastTransitionTime": T2,
        "observedGeneration": 2,
    }
    assert later.to_api() == {
        **done.to_api(),
        "progress": later_progress.to_api(),
        "readyNodes": 0,
        "nodes": "0/2",
        "restarts": 1,
        "nodeRestarts": [{"node": 0, "failures": 1, "preemptions": 0, "lastExitCode": 1, "lastExitTime": T2}],
        "observedGeneration": 2,  # the spec change was seen (and changes nothing): GitOps health checks wait for it
        # ... and refused: the status says so, also once training is over
        "conditions": [c if c["type"] != "SpecValid" else refused for c in done.to_api()["conditions"]],
    }
    assert later.phase is Phase.SUCCEEDED and later.completion_time == T1
    same = derive(
        later,
        statefulset=None,
        pods=[],
        now=T3,
        generation=2,
        problem=SpecProblem(Reason.IMMUTABLE_FIELD_CHANGED, "spec.nnodes: immutable"),
    )
    assert same.to_api() == later.to_api()


def test_too_many_restarts_is_failed_with_the_containers_last_words() -> None:
    pods = [
        trainer_pod(0, 1, last=terminated(1, "2026-01-01T00:01:00Z")),
        trainer_pod(1, 1, last=terminated(1, "2026-01-01T00:01:01Z", message="older")),
    ]
    at_limit = derive(pods=pods, max_restarts=1, now=T1)
    assert (at_limit.phase, at_limit.restarts) == (Phase.RUNNING, 1)  # the most of any node, not the sum
    # A preemption in between (the newest termination) is not the failure the message names.
    oom = terminated(137, "2026-01-01T00:02:00Z", reason="OOMKilled", message="killed\n")
    pods[0] = trainer_pod(0, 2, last=oom)
    pods[1] = trainer_pod(1, 2, last=terminated(3, "2026-01-01T00:02:30Z", message="preempted: saved"))
    failed = derive(at_limit, pods=pods, max_restarts=1, now=T2)
    message = (
        "the trainer failed 2 times (spec.maxRestarts: 1; preemptions do not count); "
        "last: pod j-0: OOMKilled (exit code 137): killed"
    )
    assert failed.to_api()["conditions"] == [
        {
            "type": "Complete",
            "status": "False",
            "reason": "TooManyRestarts",
            "message": message,
            "lastTransitionTime": T2,
            "observedGeneration": 1,
        },
        {
            "type": "Failed",
            "status": "True",
            "reason": "TooManyRestarts",
            "message": message,
            "lastTransitionTime": T2,
            "observedGeneration": 1,
        },
        {
            "type": "Ready",
            "status": "False",
            "reason": "Finished",
            "message": "training is over; pods scaled to 0",
            "lastTransitionTime": T2,
            "observedGeneration": 1,
        },
        {"type": "SpecValid", "status": "True", "reason": "Valid", "lastTransitionTime": T1, "observedGeneration": 1},
        {
            "type": "Suspended",
            "status": "False",
            "reason": "NotSuspended",
            "lastTransitionTime": T1,
            "observedGeneration": 1,
        },
    ]
    assert (failed.phase, failed.restarts, failed.preemptions, failed.completion_time, failed.start_time) == (
        Phase.FAILED,
        2,
        1,
        T2,
        T1,
    )
    assert failed.training_over


def test_too_many_restarts_counted_before_the_pods_went_away() -> None:
    """Restarts counted earlier (the status) still count when no pod shows a termination."""
    failed = derive(SFTJobStatus(restarts=2), pods=[pod(0), pod(1)], max_restarts=1)
    condition = next(c for c in failed.conditions if c.type == "Failed")
    assert (failed.phase, condition.reason) == (Phase.FAILED, "TooManyRestarts")
    assert condition.message == (
        "the trainer failed 2 times (spec.maxRestarts: 1; preemptions do not count); last: no termination recorded"
    )


def test_no_max_restarts_never_fails_on_restarts() -> None:
    assert derive(SFTJobStatus(restarts=100), pods=[pod(0), pod(1)]).phase is Phase.RUNNING


def test_preemptions_never_fail_the_job() -> None:
    """Four drains: each time pod 0 is deleted (it saves and exits 3, or is killed while
    deleted) and pod 1 saves with it and exits 3. maxRestarts 0 and still Running."""
    status = None
    for drain in range(4):
        at = f"2026-01-01T00:0{drain + 1}:00Z"
        deleted = trainer_pod(0, 0, state=terminated(3 if drain % 2 else 143, at))
        deleted["metadata"]["deletionTimestamp"] = at
        sibling = trainer_pod(1, drain + 1, last=terminated(3, at))
        status = derive(status, pods=[deleted, sibling], max_restarts=0, now=at)
        status = derive(status, pods=[pod(0), sibling], max_restarts=0, now=at)  # the new pod 0 runs
    assert (status.phase, status.restarts, status.preemptions) == (Phase.RUNNING, 0, 4)
    assert [entry.to_api() for entry in status.node_restarts] == [
        {"node": 0, "failures": 0, "preemptions": 4, "lastExitCode": 3, "lastExitTime": "2026-01-01T00:04:00Z"},
        {"node": 1, "failures": 0, "preemptions": 4, "lastExitCode": 3, "lastExitTime": "2026-01-01T00:04:00Z"},
    ]


def test_each_termination_is_counted_once() -> None:
    """The same termination seen again (current state, then last state after the restart, then
    on every later event) counts once; exit 0 (an idle pod scaled down) never counts."""
    crashed = trainer_pod(0, 0, phase="Running", state=terminated(1, T1))
    first = derive(pods=[crashed, pod(1)], max_restarts=5, now=T1)
    restarted = trainer_pod(0, 1, last=terminated(1, T1))
    again = derive(first, pods=[restarted, pod(1)], max_restarts=5, now=T2)
    again = derive(again, pods=[restarted, pod(1)], max_restarts=5, now=T3)
    assert (first.restarts, again.restarts) == (1, 1)
    idle_exit = trainer_pod(1, 0, state=terminated(0, T3))
    assert derive(again, pods=[restarted, idle_exit], max_restarts=5, now=T3).restarts == 1
    idle_exit["metadata"]["deletionTimestamp"] = T3  # a finished job scaled to 0: no preemption either
    assert derive(again, pods=[restarted, idle_exit], max_restarts=5, now=T3).preemptions == 0
    both = trainer_pod(0, 2, state=terminated(137, T3), last=terminated(1, T2))  # two new at once
    assert derive(again, pods=[both, pod(1)], max_restarts=5, now=T3).restarts == 3


def test_exit_code_2_is_config_rejected_at_once() -> None:
    rejected = terminated(2, T1, message="sft-launcher: spec.maxSeqLen 64 < the model's minimum 128")
    failed = derive(pods=[trainer_pod(0, 0, phase="Running", state=rejected), pod(1)], max_restarts=3, now=T1)
    message = (
        "the launcher rejected its configuration, a retry cannot help: "
        "pod j-0: Error (exit code 2): sft-launcher: spec.maxSeqLen 64 < the model's minimum 128"
    )
    assert conditions(failed) == {
        "Complete": ("False", "ConfigRejected"),
        "Failed": ("True", "ConfigRejected"),
        "Ready": ("False", "Finished"),
        "SpecValid": ("True", "Valid"),
    }
    assert next(c for c in failed.conditions if c.type == "Failed").message == message
    # Rejected before anything ran: no work lost and no restart follows, so none is counted.
    assert (failed.phase, failed.restarts, failed.completion_time) == (Phase.FAILED, 0, T1)
    assert [(n.node, n.failures, n.preemptions, n.last_exit_code) for n in failed.node_restarts] == [(0, 0, 0, 2)]
    assert failed.training_over


def test_config_rejection_names_the_spec_field() -> None:
    rejected = terminated(2, T1, message="trainingArgs.data_path: /d.jsonl does not exist; trainingArgs.use_liger: bad")
    failed = derive(pods=[trainer_pod(0, 0, state=rejected), pod(1)], max_restarts=3, now=T1)
    assert next(c for c in failed.conditions if c.type == "Failed").message == (
        "the launcher rejected its configuration, a retry cannot help: pod j-0: Error (exit code 2): "
        "spec.dataPath (trainingArgs.data_path): /d.jsonl does not exist; "
        "spec.extraArgs.use_liger (trainingArgs.use_liger): bad"
    )


def test_only_the_newest_termination_decides_config_rejected() -> None:
    pods = [trainer_pod(0, 2, last=terminated(1, T2)), trainer_pod(1, 1, last=terminated(2, T1))]
    assert derive(pods=pods, max_restarts=3).phase is Phase.RUNNING


def test_config_rejected_needs_the_statefulset() -> None:
    """Without a StatefulSet the pods are leftovers of an earlier run: they decide nothing."""
    status = derive(statefulset=None, pods=[trainer_pod(0, 0, state=terminated(2, T1))], max_restarts=3)
    assert status.phase is Phase.PENDING


def test_spec_failure_is_not_training_over() -> None:
    invalid = derive(statefulset=None, problem=SpecProblem(Reason.INVALID_SPEC, "bad"))
    assert invalid.phase is Phase.FAILED and not invalid.training_over


def test_restarts_never_go_down_when_pods_are_recreated() -> None:
    pods = [
        trainer_pod(0, 1, last=terminated(1, T0)),
        trainer_pod(1, 2, state=terminated(1, T1), last=terminated(1, T0)),
    ]
    restarted = derive(pods=pods, max_restarts=10)
    assert restarted.restarts == 2
    recreated = derive(restarted, pods=[pod(0), pod(1)], max_restarts=10, now=T1)
    assert recreated.restarts == 2
    assert derive(recreated, pods=[], statefulset=sts(suspend=True), now=T2).restarts == 2
    # A new pod 1 (restartCount 0 again) whose trainer fails: one more, counted from T1 on.
    new_pod = trainer_pod(1, 1, last=terminated(1, T2))
    assert derive(recreated, pods=[pod(0), new_pod], now=T2).restarts == 3


def test_last_trainer_termination_picks_the_newest() -> None:
    pods = [
        trainer_pod(0, 2, state=terminated(1, T1, message="pod 0 now"), last=terminated(137, T0, reason="OOMKilled")),
        trainer_pod(1, 1, last=terminated(3, T2, reason="Error", message="  rank 1 lost  \n")),
        {"metadata": {"name": "j-2"}, "status": {"phase": "Pending"}},
    ]
    newest = last_trainer_termination(pods)
    assert newest == Termination(pod="j-1", exit_code=3, reason="Error", message="  rank 1 lost  \n", finished_at=T2)
    assert newest.describe() == "pod j-1: Error (exit code 3): rank 1 lost"
    assert last_trainer_termination(pods[:1]) == Termination("j-0", 1, "Error", "pod 0 now", T1)
    # The reporter's terminations (T3, exit code 2) are not the trainer's.
    assert last_trainer_termination([pod(0), pod(1)]) is None
    assert Termination("j-0", 143, "", "", T0).describe() == "pod j-0: Error (exit code 143)"


def test_phase_event_messages_say_why() -> None:
    """The Suspended Event says it is suspended and what it resumes from, not "2/2 pods running"."""
    full = {
        "name": "epoch_1_samples_40",
        "path": "full_state/epoch_1_samples_40",
        "epoch": 1,
        "samples": 40,
        "midEpoch": True,
        "time": T1,
    }
    suspended = derive(
        pods=[pod(0), pod(1)],
        statefulset=sts(suspend=True),
        progress=TrainingProgress.model_validate({**progress().to_api(), "latestFullState": full}),
    )
    assert suspended.phase is Phase.SUSPENDED
    assert phase_event_message(suspended, None) == (
        "suspended by spec.suspend: pods scaled to 0; unsuspending resumes from full_state/epoch_1_samples_40"
    )
    fresh = derive(statefulset=sts(suspend=True))
    assert phase_event_message(fresh, None) == (
        "suspended by spec.suspend: pods scaled to 0; unsuspending resumes from the latest full state, if one was saved"
    )
    assert phase_event_message(derive(pods=[pod(0), pod(1)]), None) == "2/2 pods running"
    done = derive(progress=progress(Stage.COMPLETED, 80, "samples_80"))
    assert phase_event_message(done, None) == "trained 1 epochs; final checkpoint hf_format/samples_80"
    invalid = derive(statefulset=None, problem=SpecProblem(Reason.INVALID_SPEC, "spec.nnodes: bad"))
    assert phase_event_message(invalid, SpecProblem(Reason.INVALID_SPEC, "spec.nnodes: bad")) == "spec.nnodes: bad"


def test_a_crash_looping_trainer_is_not_a_running_node() -> None:
    """The reporter sidecar keeps the pod Running while the trainer waits to restart."""
    looping = trainer_pod(1, 2, state={"waiting": {"reason": "CrashLoopBackOff"}}, last=terminated(1, T0))
    status = derive(pods=[pod(0), looping], max_restarts=5)
    assert (status.phase, status.nodes) == (Phase.PENDING, "1/2")
    assert conditions(status)["Ready"] == ("False", "NodesPending")


def test_a_rendezvous_conflict_says_so_while_it_retries_and_fails_past_max_restarts() -> None:
    clash = "spec.rdzvPort: the rendezvous at j-0.j.ns.svc:29500 belongs to another job (rdzv id other, ours u)"
    looping = trainer_pod(
        1, 1, state={"waiting": {"reason": "CrashLoopBackOff"}}, last=terminated(5, T1, message=clash)
    )
    waiting = derive(pods=[pod(0), looping], max_restarts=1, now=T1)
    ready = next(c for c in waiting.conditions if c.type == "Ready")
    assert (waiting.phase, ready.reason) == (Phase.PENDING, "RendezvousConflict")
    assert ready.message == (
        f"1/2 pods running; another job holds this job's rendezvous (spec.rdzvPort): "
        f"pod j-1: Error (exit code 5): {clash}"
    )
    # Once the trainer runs again, the old exit 5 no longer explains anything.
    recovered = derive(waiting, pods=[pod(0), trainer_pod(1, 1, last=terminated(5, T1, message=clash))], now=T2)
    assert conditions(recovered)["Ready"] == ("True", "AllNodesRunning")
    again = trainer_pod(1, 2, state={"waiting": {"reason": "CrashLoopBackOff"}}, last=terminated(5, T2, message=clash))
    failed = derive(recovered, pods=[pod(0), again], max_restarts=1, now=T2)
    condition = next(c for c in failed.conditions if c.type == "Failed")
    assert (failed.phase, condition.reason, failed.training_over) == (Phase.FAILED, "RendezvousConflict", True)
    assert condition.message == (
        "another job holds this job's rendezvous (spec.rdzvPort); the trainer failed 2 times (spec.maxRestarts: 1; "
        f"preemptions do not count); last: pod j-1: Error (exit code 5): {clash}"
    )


def at(minutes: int, seconds: int = 0) -> str:
    return f"2026-01-01T{minutes // 60:02d}:{minutes % 60:02d}:{seconds:02d}Z"


def test_a_pending_job_says_which_pod_waits_and_why() -> None:
    pulling = {
        "metadata": {"name": "j-1"},
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": "trainer",
                    "restartCount": 0,
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "sft:x"'}},
                }
            ],
        },
    }
    status = derive(pods=[pod(0), pulling], startup_timeout_s=600)
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert (status.phase, ready.message) == (
        Phase.PENDING,
        '1/2 pods running; waiting for pod j-1: ImagePullBackOff: Back-off pulling image "sft:x"',
    )
    unschedulable = {
        "metadata": {"name": "j-0"},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/12 nodes are available: 12 Insufficient nvidia.com/gpu.",
                }
            ],
        },
    }
    blocker = pod_blocker([unschedulable, pulling], 2)
    assert blocker == Blocker("j-0", "Unschedulable", "0/12 nodes are available: 12 Insufficient nvidia.com/gpu.")
    assert (blocker.cause, blocker.describe()) == (
        "pod j-0: Unschedulable",
        "pod j-0: Unschedulable: 0/12 nodes are available: 12 Insufficient nvidia.com/gpu.",
    )
    assert Blocker("j-1", "ErrImagePull", "").describe() == "pod j-1: ErrImagePull"


def test_the_derived_status_carries_the_blocker_its_ready_message_names() -> None:
    pulling = {
        "metadata": {"name": "j-1"},
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {"name": "trainer", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "m"}}}
            ],
        },
    }
    args: dict[str, Any] = dict(generation=1, policy=run_policy(), statefulset=sts(), problem=None, volume=None, now=T0)
    assert derive_status(None, pods=[pod(0), pulling], **args).blocker == Blocker("j-1", "ImagePullBackOff", "m")
    assert derive_status(None, pods=[pod(0), pod(1)], **args).blocker is None  # running: nothing to wait for
    no_sts = {**args, "statefulset": None}
    assert derive_status(None, pods=[pod(0), pulling], **no_sts).blocker is None  # the message names none either


def test_startup_timeout_fails_with_the_blocking_pods_reason() -> None:
    pulling = {
        "metadata": {"name": "j-1"},
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": "trainer",
                    "restartCount": 0,
                    "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}},
                }
            ],
        },
    }
    first = derive(pods=[pod(0), pulling], now=at(0), startup_timeout_s=600)
    assert derive(first, pods=[pod(0), pulling], now=at(10), startup_timeout_s=600).phase is Phase.PENDING
    failed = derive(first, pods=[pod(0), pulling], now=at(10, 1), startup_timeout_s=600)
    condition = next(c for c in failed.conditions if c.type == "Failed")
    assert (failed.phase, condition.reason, failed.training_over) == (Phase.FAILED, "StartupTimeout", True)
    assert condition.message == (
        "not every pod ran within spec.startupTimeoutSeconds (600 s): pod j-1: ErrImagePull: not found"
    )
    # Counted again from a resume: a job suspended for long is not timed out when it comes back.
    suspended = derive(first, statefulset=sts(suspend=True), now=at(5))
    resumed = derive(suspended, pods=[pod(0), pulling], now=at(60), startup_timeout_s=600)
    assert derive(resumed, pods=[pod(0), pulling], now=at(69), startup_timeout_s=600).phase is Phase.PENDING


def test_deadline_counts_from_the_first_run_or_the_last_resume() -> None:
    running = derive(pods=[pod(0), pod(1)], now=at(0), active_deadline_s=3600)
    assert derive(running, pods=[pod(0), pod(1)], now=at(60), active_deadline_s=3600).phase is Phase.RUNNING
    over = derive(running, pods=[pod(0), pod(1)], now=at(60, 1), active_deadline_s=3600)
    condition = next(c for c in over.conditions if c.type == "Failed")
    assert (over.phase, condition.reason, over.training_over) == (Phase.FAILED, "DeadlineExceeded", True)
    assert condition.message == (
        "ran 3601 s since 2026-01-01T00:00:00Z, past spec.activeDeadlineSeconds (3600 s); the pods were stopped "
        "with SIGTERM (an on-demand checkpoint is saved) and the checkpoints stay: a job created again with the "
        "same checkpoints resumes from them"
    )
    suspended = derive(running, statefulset=sts(suspend=True), pods=[], now=at(30))
    resumed = derive(suspended, pods=[pod(0), pod(1)], now=at(100), active_deadline_s=3600)
    assert derive(resumed, pods=[pod(0), pod(1)], now=at(159), active_deadline_s=3600).phase is Phase.RUNNING
    assert derive(resumed, pods=[pod(0), pod(1)], now=at(161), active_deadline_s=3600).phase is Phase.FAILED


def test_stalled_counts_from_the_last_step_and_exempts_processing_and_saving() -> None:
    training = progress()  # last_update_time T1 = 00:05
    running = derive(pods=[pod(0), pod(1)], now=at(0), progress=training)
    assert stalled(running, at(15), 600) is None
    assert stalled(running, at(15, 1), 600) == (
        "no training step for 601 s (spec.stallTimeoutSeconds: 600); last fact on the volume at "
        "2026-01-01T00:05:00Z (Training, 40 samples, epoch 1); restarting every rank from the latest full state"
    )
    assert stalled(running, at(15, 1), None) is None
    saving = derive(pods=[pod(0), pod(1)], now=at(0), progress=progress(Stage.SAVING))
    assert stalled(saving, at(60), 600) is None  # no start-up bound given: exempt
    assert stalled(saving, at(35), 600, 1800) is None
    assert stalled(saving, at(35, 1), 600, 1800) == (
        "no training step for 1801 s (while saving spec.startupTimeoutSeconds bounds it: 1800); last fact on "
        "the volume at 2026-01-01T00:05:00Z (Saving, 40 samples, epoch 1); restarting every rank from the "
        "latest full state"
    )
    processing = derive(pods=[pod(0), pod(1)], now=at(0), progress=progress(Stage.PROCESSING_DATA))
    assert stalled(processing, at(59), 600, 1800) is None  # the launcher's data watchdog bounds it
    # Before the first step of a run (model loading, rendezvous) the start-up timeout bounds it if
    # longer: a real-node run on a loaded machine was restarted in a loop before its first step.
    starting = derive(pods=[pod(0), pod(1)], now=at(0), progress=progress(Stage.INITIALIZING))
    assert stalled(starting, at(15, 1), 600, 1800) is None
    assert stalled(starting, at(35), 600, 1800) is None
    assert stalled(starting, at(35, 1), 600, 1800) == (
        "no training step for 1801 s (before the first step spec.startupTimeoutSeconds bounds it: 1800); last "
        "fact on the volume at 2026-01-01T00:05:00Z (Initializing, 40 samples, epoch 1); restarting every rank "
        "from the latest full state"
    )
    assert stalled(starting, at(59), 600, None) is None  # no start-up bound: exempt like data processing
    assert stalled(starting, at(15, 1), 600, 60) is not None  # the longer of the two
    # A stall restart counts as a failure against maxRestarts.
    restarted = derive(running, pods=[pod(0), pod(1)], now=at(16), stall="why", max_restarts=0)
    assert (restarted.stall_restarts, restarted.restarts, restarted.phase) == (1, 1, Phase.FAILED)


def test_ranks_left_behind_by_a_failure_are_restarted_with_it() -> None:
    def running_since(ordinal: int, started: str, **kwargs: Any) -> dict[str, Any]:
        return trainer_pod(ordinal, state={"running": {"startedAt": started}}, **kwargs)

    crashed = trainer_pod(0, 1, state={"running": {"startedAt": at(5, 10)}}, last=terminated(1, at(5)))
    assert ranks_left_behind([crashed, running_since(1, at(0)), running_since(2, at(5, 20))]) == ["j-1"]
    assert ranks_left_behind([crashed, running_since(1, at(5, 30))]) == []  # already restarted
    preempted = trainer_pod(0, 1, state={"running": {"startedAt": at(5, 10)}}, last=terminated(3, at(5)))
    assert ranks_left_behind([preempted, running_since(1, at(0))]) == []  # a clean stop saves with every rank
    rejected = trainer_pod(0, 1, last=terminated(2, at(5)))
    assert ranks_left_behind([rejected, running_since(1, at(0))]) == []  # the job fails anyway


# --- backoff between the operator's group restarts ------------------------------------------------


def test_restart_backoff_is_none_then_ten_seconds_doubling_to_five_minutes() -> None:
    assert [restart_backoff_s(n) for n in range(0, 10)] == [0, 0, 10, 20, 40, 80, 160, 300, 300, 300]
    assert restart_backoff_s(10**6) == 300


def _left_behind(failure_at: str, crashes: int) -> list[dict[str, Any]]:
    crashed = trainer_pod(0, crashes, state={"running": {"startedAt": at(5, 10)}}, last=terminated(1, failure_at))
    behind = trainer_pod(1, state={"running": {"startedAt": at(0)}})
    return [crashed, behind]


def test_the_first_group_restart_is_at_once_later_ones_wait_the_backoff() -> None:
    first = group_restart_plan(_left_behind(at(5), 1), restarts=1)
    assert first is not None and first.to_api() == {
        "reason": "RanksLeftBehind",
        "restart": 1,
        "delaySeconds": 0,
        "nextRestartAt": at(5),
        "ranks": ["j-0", "j-1"],
    }
    assert not held_back(first, at(5))
    third = group_restart_plan(_left_behind(at(5), 3), restarts=3)
    assert third is not None and third.to_api() == {
        "reason": "RanksLeftBehind",
        "restart": 3,
        "delaySeconds": 20,
        "nextRestartAt": at(5, 20),
        "ranks": ["j-0", "j-1"],
    }
    assert held_back(third, at(5, 19)) and not held_back(third, at(5, 20))
    assert group_restart_plan([trainer_pod(0, state={"running": {"startedAt": at(0)}})], restarts=3) is None


def test_a_held_back_group_restart_shows_in_status_and_the_ready_message() -> None:
    pods = _left_behind(at(5), 2)
    current = derive(pods=[pod(0), pod(1)], now=at(4))
    held = derive(current, pods=pods, now=at(5, 3))
    assert held.restarts == 1  # one failure counted by this derive: the first restart, at once
    assert held.restart_backoff is None
    twice = SFTJobStatus.model_validate(
        {
            **current.to_api(),
            "restarts": 1,
            "nodeRestarts": [{"node": 0, "failures": 1, "lastExitCode": 1, "lastExitTime": at(2)}],
        }
    )  # j-0 failed once before
    held = derive(twice, pods=pods, now=at(5, 3))
    assert held.restarts == 2
    assert held.restart_backoff is not None and held.restart_backoff.to_api() == {
        "reason": "RanksLeftBehind",
        "restart": 2,
        "delaySeconds": 10,
        "nextRestartAt": at(5, 10),
        "ranks": ["j-0", "j-1"],
    }
    ready = next(c for c in held.conditions if c.type == "Ready")
    assert (ready.status, ready.message) == (
        "True",
        (
            "2/2 pods running; restarting every rank (j-0, j-1) after a rank failed at 2026-01-01T00:05:10Z: backoff 10 s before restart 2 "
            "(10 s doubling to 300 s)"
        ),
    )
    assert held.to_api()["restartBackoff"]["nextRestartAt"] == "2026-01-01T00:05:10Z"
    # Due: no longer held back, the field goes (the handler restarts the ranks).
    assert derive(held, pods=pods, now=at(5, 10)).restart_backoff is None
    # The message keeps "waiting for <pod>" last (the blocker Events are made from it).
    crashlooping = trainer_pod(
        0, 2, state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}}, last=terminated(1, at(5))
    )
    waiting = derive(twice, pods=[crashlooping, pods[1]], now=at(5, 3))
    ready = next(c for c in waiting.conditions if c.type == "Ready")
    assert ready.message == (
        "1/2 pods running; restarting every rank (j-0, j-1) after a rank failed at 2026-01-01T00:05:10Z: backoff 10 s before restart 2 "
        "(10 s doubling to 300 s); waiting for pod j-0: CrashLoopBackOff: back-off 20s"
    )


def test_a_stall_restart_after_a_failure_waits_the_backoff() -> None:
    running = derive(pods=[pod(0), pod(1)], now=at(0), progress=progress())  # last fact at 00:05
    assert stall_restart_plan(running, at(15), 600) is None  # not stalled yet
    first = stall_restart_plan(running, at(15, 1), 600)
    assert first is not None and first.to_api() == {
        "reason": "Stalled",
        "restart": 1,
        "delaySeconds": 0,
        "nextRestartAt": at(15),
        "ranks": [],
    }
    assert not held_back(first, at(15, 1))
    failed_once = SFTJobStatus.model_validate({**running.to_api(), "restarts": 1})
    second = stall_restart_plan(failed_once, at(15, 1), 600)
    assert second is not None and (second.restart, second.delay_seconds, second.next_restart_at) == (2, 10, at(15, 10))
    held = derive(failed_once, pods=[pod(0), pod(1)], now=at(15, 5), stall_timeout_s=600)
    assert held.restart_backoff == second
    ready = next(c for c in held.conditions if c.type == "Ready")
    assert ready.message == (
        "2/2 pods running; restarting every rank (stalled) at 2026-01-01T00:15:10Z: backoff 10 s "
        "before restart 2 (10 s doubling to 300 s)"
    )
    assert derive(failed_once, pods=[pod(0), pod(1)], now=at(15, 5)).restart_backoff is None  # no stall timeout
    # The restart itself (stall given) leaves no backoff behind.
    assert derive(held, pods=[pod(0), pod(1)], now=at(15, 10), stall="why", stall_timeout_s=600).restart_backoff is None


def test_a_job_held_by_a_queues_gates_is_not_timed_out_and_its_start_up_counts_from_admission() -> None:
    def gated(ordinal: int) -> dict[str, Any]:
        return {
            "metadata": {"name": f"j-{ordinal}"},
            "status": {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "SchedulingGated",
                        "message": "Scheduling is blocked due to non-empty scheduling gates",
                    }
                ],
            },
        }

    def creating(ordinal: int) -> dict[str, Any]:
        return {"metadata": {"name": f"j-{ordinal}"}, "status": {"phase": "Pending"}}

    first = derive(pods=[gated(0), gated(1)], now=at(0), startup_timeout_s=600)
    queued = next(c for c in first.conditions if c.type == "Queued")
    assert (queued.status, queued.reason, queued.message) == (
        "True",
        "SchedulingGated",
        "held back by a scheduling gate (a queue such as Kueue admits the pods): "
        "pod j-0: SchedulingGated: Scheduling is blocked due to non-empty scheduling gates",
    )
    waiting = derive(first, pods=[gated(0), gated(1)], now=at(120), startup_timeout_s=600)  # 2 hours in the queue
    assert waiting.phase is Phase.PENDING
    admitted = derive(waiting, pods=[creating(0), creating(1)], now=at(121), startup_timeout_s=600)
    assert conditions(admitted)["Queued"] == ("False", "NotGated")
    assert derive(admitted, pods=[creating(0), creating(1)], now=at(131), startup_timeout_s=600).phase is Phase.PENDING
    late = derive(admitted, pods=[creating(0), creating(1)], now=at(131, 1), startup_timeout_s=600)
    assert (late.phase, conditions(late)["Failed"]) == (Phase.FAILED, ("True", "StartupTimeout"))
    # A job never gated has no Queued condition at all.
    assert "Queued" not in conditions(derive(pods=[creating(0), creating(1)], now=at(0)))
