"""Bad config fails fast, with the field named and a meaningful exit code, and leaves existing
checkpoints exactly as they were; each one's line in the termination log (SFT_TERMINATION_LOG, the
pod's terminationMessagePath) is exact. test_launcher_messages.py has the other exits' lines."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import pytest
from sft_launch_harness import free_port, pod_env, start_launcher, tree_digest, write_config

from devtools.tiny_model import TinyAssets, build_tiny_assets
from sft_core import checkpoints as ck
from sft_core import contract

pytestmark = [pytest.mark.training, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> TinyAssets:
    return build_tiny_assets(tmp_path_factory.mktemp("assets"), num_samples=8)


@pytest.fixture()
def ckpt_with_checkpoints(tmp_path: Path) -> Path:
    """A checkpoint dir holding earlier work: an hf checkpoint and a complete full state."""
    import torch

    ckpt = tmp_path / "ckpt"
    (ckpt / "hf_format" / "samples_8").mkdir(parents=True)
    (ckpt / "hf_format" / "samples_8" / "config.json").write_text("{}")
    (ckpt / "hf_format" / "samples_8" / "model.safetensors").write_bytes(b"weights")
    state = ckpt / "full_state" / "epoch_0"
    state.mkdir(parents=True)
    (state / "optimizer.bin").write_bytes(b"optimizer")
    torch.save({"current_epoch": 0, "samples_seen": 8}, state / "training_metadata.json")
    return ckpt


def termination_message(tmp_path: Path, node_rank: int = 0) -> str:
    """What the kubelet would put in terminated.message (pod_env points the launcher here)."""
    return (tmp_path / f"termination-log-{node_rank}").read_text()


def run_launcher(
    tmp_path: Path, config: Path, *, node_rank: int = 0, nnodes: int = 1, port: int | None = None, timeout: float = 240
) -> tuple[int, str, float]:
    env = pod_env(
        config=config, node_rank=node_rank, nnodes=nnodes, port=port or free_port(), rdzv_id="bad", home=tmp_path
    )
    launcher = start_launcher(f"bad-{node_rank}", env, tmp_path)
    started = time.monotonic()
    try:
        code = launcher.wait(timeout)
        return code, launcher.log(), time.monotonic() - started
    finally:
        launcher.kill()


def test_unknown_training_arg(assets, ckpt_with_checkpoints, tmp_path) -> None:
    before = tree_digest(ckpt_with_checkpoints)
    config = write_config(
        tmp_path / "c.json",
        model_dir=assets.model_dir,
        data_path=assets.data_path,
        ckpt_dir=ckpt_with_checkpoints,
        num_epochs=1,
        extra_args={"learning_rat": 0.1},
    )
    code, log, _ = run_launcher(tmp_path, config)
    assert code == contract.EXIT_BAD_CONFIG, log
    assert "trainingArgs.learning_rat: unknown instructlab-training TrainingArgs field" in log
    assert termination_message(tmp_path) == (
        "trainingArgs.learning_rat: unknown instructlab-training TrainingArgs field\n"
    )
    assert tree_digest(ckpt_with_checkpoints) == before


def test_missing_data_file(assets, ckpt_with_checkpoints, tmp_path) -> None:
    before = tree_digest(ckpt_with_checkpoints)
    config = write_config(
        tmp_path / "c.json",
        model_dir=assets.model_dir,
        data_path=tmp_path / "nope.jsonl",
        ckpt_dir=ckpt_with_checkpoints,
        num_epochs=1,
    )
    code, log, _ = run_launcher(tmp_path, config)
    assert code == contract.EXIT_BAD_CONFIG, log
    assert f"trainingArgs.data_path: {tmp_path / 'nope.jsonl'} does not exist" in log
    assert tree_digest(ckpt_with_checkpoints) == before


def test_data_without_usable_sample(assets, ckpt_with_checkpoints, tmp_path) -> None:
    # Every sample is shorter than instructlab-training's 20-token minimum.
    short = tmp_path / "short.jsonl"
    short.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": f"ok {i}"}]})
            + "\n"
            for i in range(4)
        )
    )
    before = tree_digest(ckpt_with_checkpoints)
    config = write_config(
        tmp_path / "c.json", model_dir=assets.model_dir, data_path=short, ckpt_dir=ckpt_with_checkpoints, num_epochs=1
    )
    code, log, _ = run_launcher(tmp_path, config)
    assert code == contract.EXIT_BAD_CONFIG, log
    assert "trainingArgs.data_path: no usable sample in" in log
    assert termination_message(tmp_path) == (
        f"trainingArgs.data_path: no usable sample in {short} after processing "
        "(samples need 20 to max_seq_len=512 tokens)\n"
    )
    assert ck.read_data_ready(ckpt_with_checkpoints) is None
    after = tree_digest(ckpt_with_checkpoints)
    assert {k: v for k, v in after.items() if not k.startswith("data/")} == before


def test_unreachable_rendezvous(assets, ckpt_with_checkpoints, tmp_path) -> None:
    # Node 0 has processed the data (copied from a real processing run) but never listens.
    config = write_config(
        tmp_path / "c.json",
        model_dir=assets.model_dir,
        data_path=assets.data_path,
        ckpt_dir=ckpt_with_checkpoints,
        num_epochs=1,
        extra_top={contract.CONFIG_KEY_RDZV_TIMEOUT: 3},
    )
    prepare_data_in_process(config)
    before = tree_digest(ckpt_with_checkpoints)
    port = free_port()
    code, log, seconds = run_launcher(tmp_path, config, node_rank=1, nnodes=2, port=port)
    assert code == contract.EXIT_PEER_UNAVAILABLE, log
    assert f"PET_RDZV_ENDPOINT: rendezvous endpoint 127.0.0.1:{port} unreachable for 3s" in log
    assert seconds < 60
    assert tree_digest(ckpt_with_checkpoints) == before


def prepare_data_in_process(config: Path) -> None:
    from sft_trainer import data_once, launch_config

    launcher_config = launch_config.load_config(config)
    training_args = launch_config.build_training_args(launcher_config, cpu=True)
    data_once.prepare_on_node0(Path(training_args.ckpt_output_dir), training_args, now=lambda: datetime(2026, 1, 1))


def test_pod_name_without_ordinal(assets, tmp_path) -> None:
    config = write_config(
        tmp_path / "c.json",
        model_dir=assets.model_dir,
        data_path=assets.data_path,
        ckpt_dir=tmp_path / "ckpt",
        num_epochs=1,
    )
    env = pod_env(config=config, node_rank=0, nnodes=1, port=free_port(), rdzv_id="x", home=tmp_path)
    env[contract.ENV_POD_NAME] = "job"
    launcher = start_launcher("no-ordinal", env, tmp_path)
    try:
        assert launcher.wait(120) == contract.EXIT_BAD_CONFIG
        assert "SFT_POD_NAME: SFT_POD_NAME='job' does not end in '-<ordinal>'" in launcher.log()
    finally:
        launcher.kill()
    assert not (tmp_path / "ckpt").exists()


def test_node_waits_for_data_then_gives_up(assets, tmp_path) -> None:
    config = write_config(
        tmp_path / "c.json",
        model_dir=assets.model_dir,
        data_path=assets.data_path,
        ckpt_dir=tmp_path / "ckpt",
        num_epochs=1,
        extra_top={contract.CONFIG_KEY_DATA_WAIT_TIMEOUT: 2},
    )
    code, log, _ = run_launcher(tmp_path, config, node_rank=1, nnodes=2)
    assert code == contract.EXIT_PEER_UNAVAILABLE, log
    assert "node 0 did not finish processing the data within 2s" in log
    assert termination_message(tmp_path, node_rank=1) == (
        "node 0 did not finish processing the data within 2s (dataWaitTimeoutSeconds); no "
        f"matching {ck.DATA_READY_FILE} under {tmp_path / 'ckpt'}\n"
    )


def test_sigterm_before_training_exits_preempted(assets, tmp_path) -> None:
    config = write_config(
        tmp_path / "c.json",
        model_dir=assets.model_dir,
        data_path=assets.data_path,
        ckpt_dir=tmp_path / "ckpt",
        num_epochs=1,
    )
    env = pod_env(config=config, node_rank=1, nnodes=2, port=free_port(), rdzv_id="x", home=tmp_path)
    launcher = start_launcher("sigterm-waiting", env, tmp_path)
    try:
        launcher.wait_for_log("waiting up to", 120)
        launcher.terminate()
        assert launcher.wait(60) == contract.EXIT_PREEMPTED
        assert "received SIGTERM before training ran" in launcher.log()
    finally:
        launcher.kill()
    assert launcher.termination_message() == (
        "received SIGTERM before training ran; nothing to save, a restart resumes\n"
    )
