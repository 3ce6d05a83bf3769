"""Checkpoint ownership: the owner record, the training-fields hash, adopt/refuse/opt-in, and
retention's owner check (pure decisions, exact messages)."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from devtools.tiny_model import tiny_job_spec
from sft_core import checkpoints as ck
from sft_core import ownership
from sft_core.ownership import Acquired, Action, JobIdentity, OwnerEntry, OwnerRecord
from sft_models.models import IMMUTABLE_FIELDS, PLACEMENT_FIELDS, TRAINING_FIELDS, parse_spec

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
T1 = datetime(2026, 1, 2, tzinfo=timezone.utc)
T2 = datetime(2026, 1, 3, tzinfo=timezone.utc)
FIELDS = parse_spec(tiny_job_spec()).training_fields_view()
OLD = JobIdentity(uid="uid-old", namespace="ns", name="tiny", training_fields=FIELDS)
SAME = JobIdentity(uid="uid-new", namespace="ns", name="tiny", training_fields=FIELDS)
OTHER = JobIdentity(
    uid="uid-new", namespace="ns", name="tiny", training_fields={**FIELDS, "learningRate": 0.0002, "numEpochs": 3}
)
DIR = "/checkpoints/run"
OPT_IN = "set spec.checkpoints.adoptExisting: true to continue from them, or use another spec.checkpoints.path"


def record(*entries: OwnerEntry) -> OwnerRecord:
    return OwnerRecord(owners=list(entries))


def decide(rec, output, me, adopt_existing=False, unreadable=None):
    return ownership.decide(rec, unreadable, output, me, adopt_existing=adopt_existing, directory=DIR)


# --- what is hashed ---------------------------------------------------------------------------
def test_training_fields_are_the_immutable_fields_but_placement() -> None:
    assert set(PLACEMENT_FIELDS) <= set(IMMUTABLE_FIELDS)
    assert TRAINING_FIELDS == tuple(f for f in IMMUTABLE_FIELDS if f not in PLACEMENT_FIELDS)
    assert {"modelPath", "dataPath", "numEpochs", "learningRate", "maxSeqLen", "nnodes"} <= set(TRAINING_FIELDS)
    assert not {"checkpoints.path", "checkpoints.claim", "rdzvPort", "fullStateRetention"} & set(TRAINING_FIELDS)


def test_hash_is_canonical_json_sha256() -> None:
    assert ownership.training_fields_hash({"b": 1, "a": [1.5, None]}) == (
        "sha256:" + __import__("hashlib").sha256(b'{"a":[1.5,null],"b":1}').hexdigest()
    )
    # The same manifest, written with or without its defaults, or moved to another claim, path,
    # port or queue: the same training.
    explicit = parse_spec(
        tiny_job_spec(
            warmupSteps=0,
            beta1=0.9,
            rdzvPort=29600,
            fullStateRetention=2,
            checkpoints={"existingClaim": "shared", "path": "a/b"},
        )
    )
    assert ownership.training_fields_hash(explicit.training_fields_view()) == SAME.hash
    assert (
        ownership.training_fields_hash(parse_spec(tiny_job_spec(learningRate=2e-4)).training_fields_view()) != SAME.hash
    )


# --- decisions --------------------------------------------------------------------------------
def test_empty_directory_is_claimed() -> None:
    assert decide(None, [], SAME) == ownership.Decision(Action.CLAIM, Acquired.NEW, "")


def test_own_directory_needs_nothing() -> None:
    mine = SAME.entry(Acquired.NEW, T0)
    assert decide(record(mine), ["sft-operator/COMPLETED"], SAME) == ownership.Decision(Action.OWNED, None, "", mine)


def test_same_training_fields_adopt() -> None:
    old = OLD.entry(Acquired.NEW, T0)
    assert decide(record(old), ["sft-operator/COMPLETED"], SAME) == ownership.Decision(
        Action.ADOPT,
        Acquired.SAME_TRAINING_FIELDS,
        "adopted checkpoints of SFTJob ns/tiny (uid uid-old): same training fields",
        old,
    )


def test_other_training_fields_are_refused_naming_directory_job_and_fields() -> None:
    old = OLD.entry(Acquired.NEW, T0)
    output = [
        "sft-operator/COMPLETED",
        "full_state/epoch_0",
        "full_state/epoch_1",
        "hf_format/samples_8",
        "hf_format/samples_16",
    ]
    decision = decide(record(old), output, OTHER)
    assert decision.action is Action.REFUSE
    assert decision.message == (
        "/checkpoints/run holds the checkpoints of SFTJob ns/tiny (uid uid-old) (sft-operator/COMPLETED, "
        "full_state/epoch_0, full_state/epoch_1, hf_format/samples_8 and 1 more), trained with other training "
        f"fields (learningRate 0.0001 -> 0.0002; numEpochs 2 -> 3); {OPT_IN}"
    )


def test_an_owner_record_alone_is_another_jobs_directory() -> None:
    # A job that recorded itself and has not trained yet may still be running: refused all the same.
    decision = decide(record(OLD.entry(Acquired.NEW, T0)), [], OTHER)
    assert decision.action is Action.REFUSE
    assert decision.message.startswith(
        "/checkpoints/run holds the checkpoints of SFTJob ns/tiny (uid uid-old), trained with other training fields ("
    )


def test_opt_in_adopts_other_training_fields() -> None:
    old = OLD.entry(Acquired.NEW, T0)
    assert decide(record(old), ["full_state/epoch_0"], OTHER, adopt_existing=True) == ownership.Decision(
        Action.ADOPT,
        Acquired.ADOPT_EXISTING,
        "adopted checkpoints of SFTJob ns/tiny (uid uid-old): spec.checkpoints.adoptExisting (training fields "
        "differ: learningRate 0.0001 -> 0.0002; numEpochs 2 -> 3)",
        old,
    )


def test_checkpoints_without_a_record_are_adopted_as_unrecorded() -> None:
    assert decide(None, ["full_state/epoch_0"], OTHER) == ownership.Decision(
        Action.ADOPT,
        Acquired.UNRECORDED,
        "adopted checkpoints without an owner record in /checkpoints/run (written before owners were "
        "recorded): full_state/epoch_0",
    )


def test_unreadable_record_is_refused_unless_opted_in() -> None:
    refused = decide(None, ["full_state/epoch_0"], SAME, unreadable="owners: Field required")
    assert refused == ownership.Decision(
        Action.REFUSE,
        None,
        "/checkpoints/run has an owner record sft-operator/OWNER that cannot be read (owners: Field required); "
        + OPT_IN,
    )
    adopted = decide(None, [], SAME, adopt_existing=True, unreadable="owners: Field required")
    assert (adopted.action, adopted.acquired) == (Action.ADOPT, Acquired.ADOPT_EXISTING)


def test_many_differing_fields_are_cut_short() -> None:
    other = {key: f"x{i}" for i, key in enumerate(sorted(FIELDS))}
    text = ownership.differing_fields(FIELDS, other)
    assert text.count(" -> ") == 5 and text.endswith(f"and {len(FIELDS) - 5} more")
    assert ownership.differing_fields({}, {}) == "not recorded"


def test_adoption_appends_and_keeps_previous_owners() -> None:
    old = OLD.entry(Acquired.NEW, T0)
    decision = decide(record(old), ["sft-operator/COMPLETED"], SAME)
    after = ownership.recorded(record(old), SAME, decision, T1)
    assert [(o.uid, o.acquired, o.since) for o in after.owners] == [
        ("uid-old", Acquired.NEW, T0),
        ("uid-new", Acquired.SAME_TRAINING_FIELDS, T1),
    ]
    assert after.current.note == "adopted checkpoints of SFTJob ns/tiny (uid uid-old): same training fields"
    assert ownership.adoption(after).to_api() == {
        "previousUid": "uid-old",
        "previousJob": "ns/tiny",
        "reason": "SameTrainingFields",
        "message": "adopted checkpoints of SFTJob ns/tiny (uid uid-old): same training fields",
        "time": "2026-01-02T00:00:00Z",
    }
    assert ownership.adoption(record(old)) is None  # it started the directory: nothing adopted
    with pytest.raises(ValueError):
        ownership.recorded(None, SAME, ownership.Decision(Action.OWNED, None, ""), T1)


# --- retention --------------------------------------------------------------------------------
def _state(name: str) -> ck.FullState:
    return ck.FullState(name=name, epoch=int(name.split("_")[1]), complete=True, mtime=0.0, metadata=None)


def test_lineage_follows_same_training_field_adoptions_only() -> None:
    a = OLD.entry(Acquired.NEW, T0)
    b = OTHER.entry(Acquired.ADOPT_EXISTING, T1)
    c = JobIdentity("uid-c", "ns", "tiny", OTHER.training_fields).entry(Acquired.SAME_TRAINING_FIELDS, T2)
    assert ownership.lineage(record(a, b, c)) == [2, 1]
    assert ownership.lineage(record(a)) == [0]
    assert ownership.lineage(record(a, SAME.entry(Acquired.SAME_TRAINING_FIELDS, T1))) == [1, 0]


def test_retention_deletes_only_what_the_lineage_wrote() -> None:
    a = OLD.entry(Acquired.NEW, T0)
    b = OTHER.entry(Acquired.ADOPT_EXISTING, T1)
    written = {"epoch_0": T0.timestamp() - 1, "epoch_1": T0.timestamp() + 5, "epoch_2": T1.timestamp() + 5}
    may_delete = ownership.retention_may_delete(record(a, b), lambda state: written[state.name])
    # before any owner (unrecorded), the opted-in predecessor's, and this job's own
    assert [may_delete(_state(name)) for name in written] == [False, False, True]
    same = ownership.retention_may_delete(
        record(a, SAME.entry(Acquired.SAME_TRAINING_FIELDS, T1)), lambda state: written[state.name]
    )
    assert [same(_state(name)) for name in written] == [False, True, True]
    assert ownership.retention_may_delete(None, lambda state: 0.0)(_state("epoch_1")) is False


# --- the file ---------------------------------------------------------------------------------
def test_record_round_trip_and_unreadable(tmp_path: Path) -> None:
    assert ownership.read_owner_record(tmp_path) == (None, None)
    rec = record(OLD.entry(Acquired.NEW, T0))
    ownership.write_owner_record(tmp_path, rec)
    assert ownership.read_owner_record(tmp_path) == (rec, None)
    assert json.loads((tmp_path / "sft-operator/OWNER").read_text())["owners"][0]["uid"] == "uid-old"
    (tmp_path / "sft-operator/OWNER").write_text('{"owners": []}')
    assert ownership.read_owner_record(tmp_path) == (
        None,
        "owners: List should have at least 1 item after validation, not 0",
    )
    moved = ownership.set_aside_unreadable_record(tmp_path, T1)
    assert moved == "sft-operator/set-aside/OWNER-20260102T000000"
    assert (tmp_path / moved).read_text() == '{"owners": []}'


def test_volume_clock_is_the_file_systems(tmp_path: Path) -> None:
    before = datetime.now(timezone.utc).timestamp()
    stamp = ownership.volume_now(tmp_path).timestamp()
    assert before - 2 <= stamp <= datetime.now(timezone.utc).timestamp() + 2
    assert list((tmp_path / "sft-operator").iterdir()) == []  # the probe is gone


def test_training_output_lists_what_a_run_left(tmp_path: Path) -> None:
    assert ownership.scan_output(tmp_path) == []
    (tmp_path / "full_state/epoch_0").mkdir(parents=True)
    (tmp_path / "hf_format/samples_8").mkdir(parents=True)
    ck.write_completion_marker(
        tmp_path, ck.CompletionMarker(finished_at=T0, num_epochs=1, samples_seen=8, final_checkpoint=None)
    )
    ck.append_run_record(
        tmp_path,
        ck.RunRecord(
            started_at=T0,
            start_epoch=0,
            steps_into_epoch=0,
            start_samples_seen=0,
            metrics_log_offset=0,
            resumed_from=None,
        ),
    )
    assert ownership.scan_output(tmp_path) == [
        "sft-operator/COMPLETED",
        "full_state/epoch_0",
        "hf_format/samples_8",
        "sft-operator/runs.jsonl (1 runs)",
    ]


def test_full_state_written_at_ignores_the_metadata_our_resume_rewrites(tmp_path: Path) -> None:
    state = tmp_path / "full_state/epoch_0"
    state.mkdir(parents=True)
    (state / "optimizer.bin").write_bytes(b"x")
    (state / "training_metadata.json").write_bytes(b"x")
    os.utime(state / "optimizer.bin", (1000, 1000))
    os.utime(state / "training_metadata.json", (5000, 5000))
    assert ck.full_state_written_at(tmp_path, _state("epoch_0")) == 1000
    (state / "optimizer.bin").unlink()
    only_meta = ck.FullState(name="epoch_0", epoch=0, complete=True, mtime=5000.0, metadata=None)
    assert ck.full_state_written_at(tmp_path, only_meta) == 5000.0


# --- what the job reports -----------------------------------------------------------------------
def test_the_reporter_reports_only_a_directory_its_job_owns(tmp_path: Path) -> None:
    from sft_reporter.sidecar import VolumeReader

    ck.write_completion_marker(
        tmp_path, ck.CompletionMarker(finished_at=T0, num_epochs=2, samples_seen=8, final_checkpoint=None)
    )
    old = OLD.entry(Acquired.NEW, T0)
    ownership.write_owner_record(tmp_path, record(old))
    reader = VolumeReader(ckpt_dir=tmp_path, data_dir=tmp_path / "data", num_epochs=2, job_uid="uid-new")
    waiting = reader.read()
    # another job's COMPLETED marker never makes this job Succeeded
    assert (waiting.stage.value, waiting.percent, waiting.adoption) == ("Initializing", 0, None)
    adopted = ownership.recorded(record(old), SAME, decide(record(old), ["sft-operator/COMPLETED"], SAME), T1)
    ownership.write_owner_record(tmp_path, adopted)
    progress = reader.read()
    assert (progress.stage.value, progress.percent) == ("Completed", 100)
    assert progress.adoption is not None and progress.adoption.message == (
        "adopted checkpoints of SFTJob ns/tiny (uid uid-old): same training fields"
    )
    # a config without a uid (not rendered by the operator): everything is reported, as before
    assert VolumeReader(ckpt_dir=tmp_path, data_dir=tmp_path / "data", num_epochs=2).read().adoption is None


def test_an_adoption_is_said_once_as_an_event() -> None:
    from fake_kube import FakeKube

    from sft_core.progress import TrainingProgress
    from sft_models.models import SFTJobStatus
    from sft_operator import publishing

    class Events(FakeKube):
        def __init__(self) -> None:
            self.posted: list[tuple[str, str, str]] = []

        def post_event(self, job: dict[str, Any], type_: str, reason: str, message: str) -> None:
            self.posted.append((type_, reason, message))

    adopted = ownership.adoption(
        ownership.recorded(
            record(OLD.entry(Acquired.NEW, T0)), SAME, decide(record(OLD.entry(Acquired.NEW, T0)), [], SAME), T1
        )
    )
    before = SFTJobStatus(progress=TrainingProgress())
    after = SFTJobStatus(progress=TrainingProgress(adoption=adopted))
    body = {"metadata": {"name": "tiny", "namespace": "ns"}, "spec": {}}
    kube = Events()
    publishing._post_events(kube, body, before, after, None)
    publishing._post_events(kube, body, after, after, None)  # unchanged: nothing more
    assert kube.posted == [
        ("Normal", "AdoptedCheckpoints", "adopted checkpoints of SFTJob ns/tiny (uid uid-old): same training fields")
    ]


def test_the_launchers_retention_keeps_what_the_lineage_did_not_write(tmp_path: Path) -> None:
    """launcher.prune with checkpoint_owner.retention_filter on a directory adopted with
    adoptExisting: the previous job's complete epoch states stay, this job's older one goes."""
    import torch

    from sft_trainer import checkpoint_owner, launch_config, launcher

    def full_state(epoch: int, written: datetime) -> None:
        directory = tmp_path / "full_state" / f"epoch_{epoch}"
        directory.mkdir(parents=True)
        (directory / "optimizer.bin").write_bytes(b"x")
        torch.save({"current_epoch": epoch, "samples_seen": 8 * (epoch + 1)}, directory / "training_metadata.json")
        os.utime(directory / "optimizer.bin", (written.timestamp(), written.timestamp()))

    for epoch in (0, 1):  # the previous job's
        full_state(epoch, T0.replace(hour=epoch + 1))
    for epoch in (2, 3, 4):  # this job's, after it adopted them at T1
        full_state(epoch, T1.replace(hour=epoch))
    old = OLD.entry(Acquired.NEW, T0)
    adopted = ownership.recorded(record(old), OTHER, decide(record(old), ["x"], OTHER, adopt_existing=True), T1)
    ownership.write_owner_record(tmp_path, adopted)
    config = launch_config.parse_config(
        {
            "jobName": "tiny",
            "namespace": "ns",
            "jobUid": "uid-new",
            "trainingFields": OTHER.training_fields,
            "adoptExistingCheckpoints": True,
            "trainingArgs": {"ckpt_output_dir": str(tmp_path)},
        }
    )
    launcher.prune(tmp_path, 1, checkpoint_owner.retention_filter(tmp_path, config))
    assert sorted(p.name for p in (tmp_path / "full_state").iterdir()) == ["epoch_0", "epoch_1", "epoch_4"]
    # Without a uid in the config (a config not rendered by the operator): as before, any state.
    bare = launch_config.parse_config({"trainingArgs": {"ckpt_output_dir": str(tmp_path)}})
    assert checkpoint_owner.retention_filter(tmp_path, bare) is None
    launcher.prune(tmp_path, 1, None)
    assert sorted(p.name for p in (tmp_path / "full_state").iterdir()) == ["epoch_4"]


def test_an_owner_record_past_the_status_bounds_costs_only_the_adoption(tmp_path: Path, caplog) -> None:
    """The owner record is the job's own writing: a previous owner's name past the status
    schema's bound leaves the adoption out (said once), and the progress is still published."""
    from sft_reporter.sidecar import VolumeReader

    long_name = JobIdentity(uid="uid-old", namespace="ns", name="n" * 400, training_fields=FIELDS)
    old = long_name.entry(Acquired.NEW, T0)
    adopted = ownership.recorded(record(old), SAME, decide(record(old), ["sft-operator/COMPLETED"], SAME), T1)
    ownership.write_owner_record(tmp_path, adopted)
    reader = VolumeReader(ckpt_dir=tmp_path, data_dir=tmp_path / "data", num_epochs=1, job_uid=SAME.uid)
    with caplog.at_level("WARNING", logger="sft_reporter.sidecar"):
        first, again = reader.read(), reader.read()
    assert first == again and first.adoption is None
    assert first.to_api()["epochDisplay"] == "1/1"
    assert [r.getMessage().split(":")[0:2] for r in caplog.records] == [
        ["left out of the summary", " progress.adoption"]
    ]
