"""Checkpoint ownership with the real launcher process (sft-trainer, as a pod runs it): a job
re-created with other training fields on a directory holding a finished run is refused with
the directory and the other job named, and the old run's files stay byte-identical; with the
same fields (or the opt-in) it adopts the run and records the adoption; an unrecorded run (an
older version's) is adopted with a warning."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sft_launch_harness import free_port, pod_env, start_launcher, tree_digest, write_config

from devtools.tiny_model import TinyAssets, build_tiny_assets
from sft_core import checkpoints as ck
from sft_core import contract, ownership
from sft_core.ownership import Acquired, JobIdentity, OwnerRecord

pytestmark = [pytest.mark.training, pytest.mark.timeout(600)]

OLD_FIELDS = {"modelPath": "/models/tiny", "numEpochs": 1, "learningRate": 0.001}
FINISHED = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> TinyAssets:
    return build_tiny_assets(tmp_path_factory.mktemp("assets"), num_samples=8)


def finished_run(ckpt: Path, *, owner: bool = True) -> Path:
    """What a finished 1-epoch run of job tests/job (uid uid-old) leaves: a checkpoint, a full
    state, a run record, the completion marker and (unless ``owner`` is False: an older
    version's run) the owner record."""
    import torch

    (ckpt / "hf_format" / "samples_8").mkdir(parents=True)
    (ckpt / "hf_format" / "samples_8" / "config.json").write_text("{}")
    (ckpt / "hf_format" / "samples_8" / "model.safetensors").write_bytes(b"weights")
    state = ckpt / "full_state" / "epoch_0"
    state.mkdir(parents=True)
    (state / "optimizer.bin").write_bytes(b"optimizer")
    torch.save({"current_epoch": 0, "samples_seen": 8}, state / "training_metadata.json")
    ck.append_run_record(
        ckpt,
        ck.RunRecord(
            started_at=FINISHED,
            start_epoch=0,
            steps_into_epoch=0,
            start_samples_seen=0,
            metrics_log_offset=0,
            resumed_from=None,
        ),
    )
    ck.write_completion_marker(
        ckpt,
        ck.CompletionMarker(finished_at=FINISHED, num_epochs=1, samples_seen=8, final_checkpoint="hf_format/samples_8"),
    )
    if owner:
        old = JobIdentity(uid="uid-old", namespace="tests", name="job", training_fields=OLD_FIELDS)
        ownership.write_owner_record(ckpt, OwnerRecord(owners=[old.entry(Acquired.NEW, FINISHED)]))
    return ckpt


def config_for(tmp_path: Path, assets: TinyAssets, ckpt: Path, fields: dict, *, adopt: bool = False) -> Path:
    return write_config(
        tmp_path / "c.json",
        model_dir=assets.model_dir,
        data_path=assets.data_path,
        ckpt_dir=ckpt,
        num_epochs=1,
        extra_top={
            contract.CONFIG_KEY_JOB_UID: "uid-new",
            contract.CONFIG_KEY_TRAINING_FIELDS: fields,
            contract.CONFIG_KEY_ADOPT_EXISTING: adopt,
        },
    )


def run_until_exit(tmp_path: Path, config: Path, *, node_rank: int = 0, nnodes: int = 1):
    env = pod_env(config=config, node_rank=node_rank, nnodes=nnodes, port=free_port(), rdzv_id="own", home=tmp_path)
    launcher = start_launcher(f"own-{node_rank}", env, tmp_path)
    try:
        return launcher.wait(240), launcher.log(), launcher.termination_message()
    finally:
        launcher.kill()


def run_until_idle(tmp_path: Path, config: Path):
    """A launcher that finds the run finished idles until SIGTERM (as in a pod)."""
    env = pod_env(config=config, node_rank=0, nnodes=1, port=free_port(), rdzv_id="own", home=tmp_path)
    launcher = start_launcher("own-idle", env, tmp_path)
    try:
        launcher.wait_for_log("idling until the job is scaled down", 240)
        launcher.terminate()
        return launcher.wait(60), launcher.log(), launcher.termination_message()
    finally:
        launcher.kill()


@pytest.mark.parametrize(("node_rank", "nnodes"), [(0, 1), (1, 2)])
def test_other_training_fields_are_refused_and_nothing_is_touched(assets, tmp_path, node_rank, nnodes) -> None:
    ckpt = finished_run(tmp_path / "ckpt")
    before = tree_digest(ckpt)
    config = config_for(tmp_path, assets, ckpt, {**OLD_FIELDS, "learningRate": 0.002})
    code, log, message = run_until_exit(tmp_path, config, node_rank=node_rank, nnodes=nnodes)
    assert code == contract.EXIT_BAD_CONFIG, log
    assert message == (
        f"spec.checkpoints: {ckpt} holds the checkpoints of SFTJob tests/job (uid uid-old) (sft-operator/COMPLETED, "
        "full_state/epoch_0, hf_format/samples_8, sft-operator/runs.jsonl (1 runs)), trained with other training "
        "fields (learningRate 0.001 -> 0.002); set spec.checkpoints.adoptExisting: true to continue from them, or "
        "use another spec.checkpoints.path\n"
    )
    assert tree_digest(ckpt) == before  # byte-identical, mtimes too


def test_same_training_fields_adopt_the_finished_run(assets, tmp_path) -> None:
    ckpt = finished_run(tmp_path / "ckpt")
    before = tree_digest(ckpt)
    code, log, message = run_until_idle(tmp_path, config_for(tmp_path, assets, ckpt, dict(OLD_FIELDS)))
    assert code == contract.EXIT_OK, log
    assert message == "finished: 1 epochs, 8 samples, final checkpoint hf_format/samples_8\n"
    assert "adopted checkpoints of SFTJob tests/job (uid uid-old): same training fields" in log
    record, _ = ownership.read_owner_record(ckpt)
    assert [(o.uid, o.acquired) for o in record.owners] == [
        ("uid-old", Acquired.NEW),
        ("uid-new", Acquired.SAME_TRAINING_FIELDS),
    ]
    after = tree_digest(ckpt)
    # Only the owner record changed: the run's own files are byte-identical.
    assert {k: v for k, v in after.items() if k != ck.OWNER_FILE} == {
        k: v for k, v in before.items() if k != ck.OWNER_FILE
    }


def test_opt_in_adopts_other_training_fields(assets, tmp_path) -> None:
    ckpt = finished_run(tmp_path / "ckpt")
    config = config_for(tmp_path, assets, ckpt, {**OLD_FIELDS, "learningRate": 0.002}, adopt=True)
    code, log, _ = run_until_idle(tmp_path, config)
    assert code == contract.EXIT_OK, log
    assert (
        "WARNING adopted checkpoints of SFTJob tests/job (uid uid-old): spec.checkpoints.adoptExisting "
        "(training fields differ: learningRate 0.001 -> 0.002)"
    ) in log
    record, _ = ownership.read_owner_record(ckpt)
    assert record.current.acquired is Acquired.ADOPT_EXISTING
    assert json.loads((ckpt / ck.OWNER_FILE).read_text())["owners"][0]["uid"] == "uid-old"


def test_an_unrecorded_run_is_adopted_with_a_warning(assets, tmp_path) -> None:
    ckpt = finished_run(tmp_path / "ckpt", owner=False)
    code, log, _ = run_until_idle(tmp_path, config_for(tmp_path, assets, ckpt, dict(OLD_FIELDS)))
    assert code == contract.EXIT_OK, log
    assert (
        f"WARNING adopted checkpoints without an owner record in {ckpt} (written before owners were "
        "recorded): sft-operator/COMPLETED, full_state/epoch_0, hf_format/samples_8, sft-operator/runs.jsonl "
        "(1 runs)"
    ) in log
    record, _ = ownership.read_owner_record(ckpt)
    assert [(o.uid, o.acquired) for o in record.owners] == [("uid-new", Acquired.UNRECORDED)]
