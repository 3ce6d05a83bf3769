"""Real OSFT (rhai-innovation-mini-trainer 0.9.0) on CPU through the launcher: two launchers as two
"nodes" over loopback with exactly the env the StatefulSet gives, the config the operator renders
for ``spec.algorithm: osft``. One uninterrupted reference run; an interrupted one resumed from
epoch 2 of 3 must give the same loss sequence (mini-trainer alone trains no step after such a
resume: osft_worker)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from sft_launch_harness import free_port, pod_env, start_launcher, tree_digest

from devtools.tiny_model import TinyAssets, build_tiny_assets
from sft_core import checkpoints as ck
from sft_core import contract

pytestmark = [pytest.mark.training, pytest.mark.timeout(900)]

NUM_SAMPLES = 48  # effective batch 4 -> 12 steps per epoch
NUM_EPOCHS = 3
STEPS = 12 * NUM_EPOCHS
RUN_TIMEOUT = 420


def write_osft_config(path: Path, *, assets: TinyAssets, ckpt_dir: Path, retention: int | None = None) -> Path:
    """What SFTJobSpec.training_config renders for an OSFT job (training_hub osft() names)."""
    config = {
        contract.CONFIG_KEY_JOB_NAME: "job",
        contract.CONFIG_KEY_NAMESPACE: "tests",
        contract.CONFIG_KEY_NUM_EPOCHS: NUM_EPOCHS,
        contract.CONFIG_KEY_RETENTION: retention,
        contract.CONFIG_KEY_ALGORITHM: "osft",
        contract.CONFIG_KEY_TRAINING_ARGS: {
            "model_path": str(assets.model_dir),
            "data_path": str(assets.data_path),
            "ckpt_output_dir": str(ckpt_dir),
            "data_output_dir": str(ckpt_dir / "data"),
            "unfreeze_rank_ratio": 0.5,
            "num_epochs": NUM_EPOCHS,
            "effective_batch_size": 4,
            "learning_rate": 1e-3,
            "max_seq_len": 512,
            "max_tokens_per_gpu": 2048,
            "warmup_steps": 0,
            "checkpoint_at_epoch": True,
            "lr_scheduler": "constant_with_warmup",
            "seed": 42,
            "data_process_num_cpu_procs": 1,
        },
    }
    path.write_text(json.dumps(config))
    return path


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


def make_job(assets: TinyAssets, home: Path, name: str, retention: int | None = None) -> Job:
    ckpt = home / "ckpt"
    config = write_osft_config(home / "training.json", assets=assets, ckpt_dir=ckpt, retention=retention)
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
    job = make_job(assets, tmp_path_factory.mktemp("reference"), "osft-reference")
    started = time.monotonic()
    launchers = run_to_idle(job, "first")
    print(f"uninterrupted 2-node OSFT run, {STEPS} steps: {time.monotonic() - started:.1f} s")
    return job, launchers


def losses(root: Path, offset: int = 0) -> list[tuple[int, int, float]]:
    """(step, epoch, loss) of node 0's metrics log, from byte ``offset``."""
    return [(s.step, s.epoch, s.avg_loss) for s in ck.read_metrics_log(ck.metrics_log_path(root), offset).steps]


def test_two_nodes_train_osft_to_completion(assets, reference) -> None:
    job, launchers = reference
    total = NUM_SAMPLES * NUM_EPOCHS
    assert [launcher.termination_message() for launcher in launchers] == [
        f"finished: {NUM_EPOCHS} epochs, {total} samples, final checkpoint hf_format/samples_{total}.0\n",
        f"finished: {NUM_EPOCHS} epochs (node 0 wrote the completion marker)\n",
    ]
    tree = ck.scan_checkpoints(job.ckpt)
    assert (tree.completion.num_epochs, tree.completion.samples_seen, tree.completion.final_checkpoint) == (
        NUM_EPOCHS,
        total,
        f"hf_format/samples_{total}.0",
    )
    assert [(c.name, c.samples, c.epoch, c.complete) for c in tree.hf_checkpoints] == [
        ("samples_48.0", 48, 0, True),
        ("samples_96.0", 96, 1, True),
        ("samples_144.0", 144, 2, True),
    ]
    assert tree.full_states == []  # mini-trainer saves full states only on a signal
    steps = ck.read_metrics_log(ck.metrics_log_path(job.ckpt)).steps
    assert [(s.step, s.epoch, s.samples_seen) for s in steps] == [
        (step, (step - 1) // 12, 4 * step) for step in range(1, STEPS + 1)
    ]
    # The data step is SFT's: processed once, by node 0, into the data dir mini-trainer reads.
    node0, node1 = (launcher.log() for launcher in launchers)
    processing = f"processing {assets.data_path} into {job.ckpt / 'data'}"
    assert node0.count(processing) == 1 and "processed data ready: 48 samples" in node0
    assert processing not in node1 and "waiting up to" in node1
    assert f"--data-path={job.ckpt / 'data' / 'data.jsonl'}" in node0


def test_restarted_launchers_idle_without_training(reference) -> None:
    job, _ = reference
    before = tree_digest(job.ckpt)
    launchers = run_to_idle(job, "restart")
    for launcher in launchers:
        assert "training already finished" in launcher.log()
        assert "Running training command" not in launcher.log()
    assert tree_digest(job.ckpt) == before


def test_pod_deleted_in_epoch_2_resumes_with_the_same_losses(assets, reference, tmp_path) -> None:
    ref_job, _ = reference
    expected = losses(ref_job.ckpt)
    assert len(expected) == STEPS
    job = make_job(assets, tmp_path, "osft-preempted", retention=1)
    launchers = [job.start(0, "run1"), job.start(1, "run1")]
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        # Delete pod 1 a few steps into epoch 2 of 3 (the kubelet's SIGTERM to PID 1).
        while not any(step >= 16 for step, _, _ in losses(job.ckpt)):
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
    assert saved.directory == "full_state_checkpoints" and saved.metadata.current_epoch == 1, saved
    assert 12 < saved.metadata.global_step < 24
    preempted = (
        f"preempted: saved full_state_checkpoints/{saved.name} (epoch 2 of {NUM_EPOCHS}, "
        f"{saved.metadata.samples_seen} samples seen); a restart resumes\n"
    )
    assert [launcher.termination_message() for launcher in launchers] == [preempted] * 2
    assert ck.read_completion_marker(job.ckpt) is None
    run1 = losses(job.ckpt)

    launchers = run_to_idle(job, "run2")
    records = ck.read_run_records(job.ckpt)
    assert [(r.start_epoch, r.steps_into_epoch, r.start_samples_seen, r.resumed_from) for r in records] == [
        (0, 0, 0, None),
        (1, saved.metadata.global_step - 12, saved.metadata.samples_seen, f"full_state_checkpoints/{saved.name}"),
    ]
    assert "exact resume from" in (job.ckpt / "training_log_node0.log").read_text()
    run2 = losses(job.ckpt, records[1].metrics_log_offset)
    # Exactly the uninterrupted run's steps and losses: run 1 up to the save, run 2 from there.
    assert run1[: saved.metadata.global_step] == expected[: saved.metadata.global_step]
    assert run2 == expected[saved.metadata.global_step :]
    marker = ck.read_completion_marker(job.ckpt)
    assert (marker.samples_seen, marker.final_checkpoint) == (NUM_SAMPLES * NUM_EPOCHS, "hf_format/samples_144.0")


def test_finished_run_without_marker_is_completed_not_retrained(reference, tmp_path) -> None:
    # A crash between the final save and writing COMPLETED: the next start must not train again.
    import shutil

    ref_job, _ = reference
    ckpt = tmp_path / "ckpt"
    shutil.copytree(ref_job.ckpt, ckpt)
    (ckpt / ck.COMPLETION_MARKER_FILE).unlink()
    config = tmp_path / "training.json"
    config.write_text(ref_job.config.read_text().replace(str(ref_job.ckpt), str(ckpt)))
    job = Job(ckpt=ckpt, config=config, home=tmp_path, port=free_port(), rdzv_id="osft-crashed")
    node0 = job.start(0, "after-crash")
    try:
        node0.wait_for_log("idling until the job is scaled down", 120)
        node0.terminate()
        assert node0.wait(60) == contract.EXIT_OK
    finally:
        node0.kill()
    assert "its model is saved: training already finished" in node0.log()
    assert "Running training command" not in node0.log()
    assert "not processing again" in node0.log()
    marker = ck.read_completion_marker(ckpt)
    assert (marker.samples_seen, marker.final_checkpoint) == (NUM_SAMPLES * NUM_EPOCHS, "hf_format/samples_144.0")
