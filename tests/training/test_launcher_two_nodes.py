"""Real instructlab-training on CPU: two launchers as two "nodes" over loopback, with exactly the
env the StatefulSet gives. Shared set-up: one tiny model, one uninterrupted reference run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from sft_launch_harness import free_port, pod_env, start_launcher, tree_digest, write_config

from devtools.tiny_model import TinyAssets, build_tiny_assets
from sft_core import checkpoints as ck
from sft_core import contract

pytestmark = [pytest.mark.training, pytest.mark.timeout(900)]

NUM_SAMPLES = 48  # effective batch 4 -> 12 steps per epoch
NUM_EPOCHS = 3
RETENTION = 2
RUN_TIMEOUT = 420


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> TinyAssets:
    return build_tiny_assets(tmp_path_factory.mktemp("assets"), num_samples=NUM_SAMPLES)


@dataclass
class Job:
    ckpt: Path
    config: Path
    home: Path
    port: int
    rdzv_id: str

    def start(self, node_rank: int, tag: str):
        env = pod_env(
            config=self.config, node_rank=node_rank, nnodes=2, port=self.port, rdzv_id=self.rdzv_id, home=self.home
        )
        return start_launcher(f"{tag}-node{node_rank}", env, self.home)


def make_job(assets: TinyAssets, home: Path, name: str) -> Job:
    ckpt = home / "ckpt"
    config = write_config(
        home / "training.json",
        model_dir=assets.model_dir,
        data_path=assets.data_path,
        ckpt_dir=ckpt,
        num_epochs=NUM_EPOCHS,
        retention=RETENTION,
    )
    return Job(ckpt=ckpt, config=config, home=home, port=free_port(), rdzv_id=name)


def run_to_idle(job: Job, tag: str) -> list:
    launchers = [job.start(0, tag), job.start(1, tag)]
    try:
        for launcher in launchers:
            launcher.wait_for_log("idling until the job is scaled down", RUN_TIMEOUT)
        for launcher in launchers:
            launcher.terminate()
        codes = [launcher.wait(60) for launcher in launchers]
        assert codes == [contract.EXIT_OK, contract.EXIT_OK], "".join(launcher.tail() for launcher in launchers)
        return launchers
    finally:
        for launcher in launchers:
            launcher.kill()


@pytest.fixture(scope="module")
def reference(assets: TinyAssets, tmp_path_factory: pytest.TempPathFactory):
    job = make_job(assets, tmp_path_factory.mktemp("reference"), "reference")
    launchers = run_to_idle(job, "first")
    return job, launchers


def step_sequence(log: ck.MetricsLog) -> list[tuple[int, int]]:
    return [(step.epoch, step.samples_seen) for step in log.steps]


def test_two_nodes_train_to_completion(reference) -> None:
    job, launchers = reference
    tree = ck.scan_checkpoints(job.ckpt)
    total = NUM_SAMPLES * NUM_EPOCHS
    # terminated.message of each pod (exit 0 after idling): what finished, one line
    assert [launcher.termination_message() for launcher in launchers] == [
        f"finished: {NUM_EPOCHS} epochs, {total} samples, final checkpoint hf_format/samples_{total}\n",
        f"finished: {NUM_EPOCHS} epochs (node 0 wrote the completion marker)\n",
    ]
    assert tree.completion is not None
    assert (tree.completion.num_epochs, tree.completion.samples_seen, tree.completion.final_checkpoint) == (
        NUM_EPOCHS,
        total,
        f"hf_format/samples_{total}",
    )
    assert [(c.name, c.epoch, c.complete) for c in tree.hf_checkpoints] == [
        ("samples_48", 0, True),
        ("samples_96", 1, True),
        ("samples_144", 2, True),
    ]
    # Retention kept the last RETENTION complete full states.
    assert [(s.name, s.metadata.current_epoch, s.metadata.samples_seen) for s in tree.full_states] == [
        ("epoch_1", 1, 96),
        ("epoch_2", 2, 144),
    ]
    log = ck.read_metrics_log(ck.metrics_log_path(job.ckpt))
    assert log.totals[0].num_gpus == 2 and log.totals[0].num_batches == 12
    assert step_sequence(log) == [(epoch, 4 * step) for step in range(1, 37) for epoch in [(step - 1) // 12]]


def test_data_processed_once(assets, reference) -> None:
    job, launchers = reference
    node0, node1 = (launcher.log() for launcher in launchers)
    processing = f"processing {assets.data_path} into {job.ckpt / 'data'}"
    assert node0.count(processing) == 1 and "processed data ready: 48 samples" in node0
    assert processing not in node1 and "waiting up to" in node1
    marker = ck.read_data_ready(job.ckpt)
    assert (marker.num_samples, marker.data_dir) == (NUM_SAMPLES, str(job.ckpt / "data"))


def test_restarted_launchers_idle_without_training(reference) -> None:
    job, _ = reference
    before = tree_digest(job.ckpt)
    launchers = run_to_idle(job, "restart")
    for launcher in launchers:
        assert "training already finished" in launcher.log()
        assert "Running training command" not in launcher.log()
    assert tree_digest(job.ckpt) == before


def test_sigterm_saves_and_resume_continues_exactly(assets, reference, tmp_path) -> None:
    ref_job, _ = reference
    ref_steps = ck.read_metrics_log(ck.metrics_log_path(ref_job.ckpt)).steps
    job = make_job(assets, tmp_path, "preempted")
    launchers = [job.start(0, "run1"), job.start(1, "run1")]
    try:
        # Preempt one pod in the middle of epoch 1: any rank's signal makes every rank save.
        import time

        deadline = time.monotonic() + RUN_TIMEOUT
        while not any(step.epoch >= 1 for step in ck.read_metrics_log(ck.metrics_log_path(job.ckpt)).steps):
            assert all(launcher.process.poll() is None for launcher in launchers), "".join(
                launcher.tail() for launcher in launchers
            )
            assert time.monotonic() < deadline, "".join(launcher.tail() for launcher in launchers)
            time.sleep(0.1)
        launchers[1].terminate()
        codes = [launcher.wait(300) for launcher in launchers]
        assert codes == [contract.EXIT_PREEMPTED] * 2, "".join(launcher.tail() for launcher in launchers)
    finally:
        for launcher in launchers:
            launcher.kill()

    saved = ck.scan_checkpoints(job.ckpt).latest_full_state
    assert saved.metadata.mid_epoch, saved
    assert 1 <= saved.metadata.current_epoch < NUM_EPOCHS
    # terminated.message: what was saved (1-based epoch) and that a restart resumes
    preempted = (
        f"preempted: saved full_state/{saved.name} (epoch "
        f"{saved.metadata.current_epoch + 1} of {NUM_EPOCHS}, "
        f"{saved.metadata.samples_seen} samples seen); a restart resumes\n"
    )
    assert [launcher.termination_message() for launcher in launchers] == [preempted] * 2
    assert ck.read_completion_marker(job.ckpt) is None
    run1_steps = ck.read_metrics_log(ck.metrics_log_path(job.ckpt)).steps

    run_to_idle(job, "run2")

    records = ck.read_run_records(job.ckpt)
    assert len(records) == 2
    resumed = records[1]
    assert (resumed.start_epoch, resumed.start_samples_seen, resumed.resumed_from) == (
        saved.metadata.current_epoch,
        saved.metadata.samples_seen,
        saved.name,
    )
    # Upstream would skip `global_step` batches from the start of the saved epoch: epochs' worth.
    assert saved.metadata.global_step > 12
    assert resumed.steps_into_epoch <= 12

    run2_steps = ck.read_metrics_log(ck.metrics_log_path(job.ckpt), offset=resumed.metrics_log_offset).steps
    reference_sequence = [(s.epoch, s.samples_seen) for s in ref_steps]
    run1 = [(s.epoch, s.samples_seen) for s in run1_steps]
    run2 = [(s.epoch, s.samples_seen) for s in run2_steps]
    assert run1 == reference_sequence[: len(run1)]
    # The resumed run starts with the step right after the saved samples_seen, and goes on
    # exactly as the uninterrupted run did.
    next_index = [samples for _, samples in reference_sequence].index(saved.metadata.samples_seen) + 1
    assert run2 == reference_sequence[next_index:]
    # Same batches, same optimizer and RNG state: the same losses as the uninterrupted run.
    ref_losses = [s.avg_loss for s in ref_steps[next_index:]]
    assert [s.avg_loss for s in run2_steps] == pytest.approx(ref_losses, rel=1e-3)
    marker = ck.read_completion_marker(job.ckpt)
    assert marker.samples_seen == NUM_SAMPLES * NUM_EPOCHS


def test_finished_run_without_marker_is_completed_not_retrained(reference, tmp_path) -> None:
    # A crash between the last save and writing COMPLETED: the next start must not train again.
    import shutil

    ref_job, _ = reference
    ckpt = tmp_path / "ckpt"
    shutil.copytree(ref_job.ckpt, ckpt)
    (ckpt / ck.COMPLETION_MARKER_FILE).unlink()
    # Same inputs as the reference, so its processed data (fingerprint) still counts.
    config = tmp_path / "training.json"
    config.write_text(ref_job.config.read_text().replace(str(ref_job.ckpt), str(ckpt)))
    job = Job(ckpt=ckpt, config=config, home=tmp_path, port=free_port(), rdzv_id="crashed")
    node0 = job.start(0, "after-crash")
    try:
        node0.wait_for_log("idling until the job is scaled down", 120)
        node0.terminate()
        assert node0.wait(60) == contract.EXIT_OK
    finally:
        node0.kill()
    assert "the last epoch's full state exists" in node0.log()
    assert "Running training command" not in node0.log()
    assert "not processing again" in node0.log()
    assert ck.read_completion_marker(ckpt).samples_seen == NUM_SAMPLES * NUM_EPOCHS
