"""The real launcher writes one exact line to its termination log (SFT_TERMINATION_LOG, the pod's
terminationMessagePath) for each way it exits (unusable data, an unknown argument, a peer that never
came and SIGTERM before training: in test_launcher_bad_config.py, whose runs of those exits also
check the checkpoints; finished and preempted: test_launcher_two_nodes.py), and node 0's data
processing survives a stuck child: the watchdog kills its process group and processes again."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from sft_launch_harness import free_port, pod_env, start_launcher, write_config

from devtools.tiny_model import TinyAssets, build_tiny_assets
from sft_core import checkpoints as ck
from sft_core import contract

pytestmark = [pytest.mark.training, pytest.mark.timeout(600)]

GOOD = {
    "messages": [
        {"role": "user", "content": "question one two three four five six"},
        {"role": "assistant", "content": "answer one two three four five six"},
    ]
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> TinyAssets:
    return build_tiny_assets(tmp_path_factory.mktemp("assets"), num_samples=8)


def jsonl(path: Path, *lines: object) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def run_launcher(
    tmp_path: Path, config: Path, *, node_rank: int = 0, nnodes: int = 1, timeout: float = 240
) -> tuple[int, str, str]:
    env = pod_env(
        config=config, node_rank=node_rank, nnodes=nnodes, port=free_port(), rdzv_id="messages", home=tmp_path
    )
    launcher = start_launcher(f"messages-{node_rank}", env, tmp_path)
    try:
        code = launcher.wait(timeout)
        return code, launcher.termination_message(), launcher.log()
    finally:
        launcher.kill()


def config_for(assets: TinyAssets, tmp_path: Path, data: Path, **extra_top) -> Path:
    return write_config(
        tmp_path / "c.json",
        model_dir=assets.model_dir,
        data_path=data,
        ckpt_dir=tmp_path / "ckpt",
        num_epochs=1,
        extra_top=extra_top,
    )


def test_a_line_without_messages(assets, tmp_path) -> None:
    data = jsonl(tmp_path / "train.jsonl", GOOD, {"msgs": []}, GOOD)
    code, message, log = run_launcher(tmp_path, config_for(assets, tmp_path, data))
    assert code == contract.EXIT_BAD_CONFIG, log
    assert message == f'trainingArgs.data_path: {data} line 2: no "messages" field\n'
    assert ck.read_data_ready(tmp_path / "ckpt") is None


def test_malformed_json_names_the_1_based_line(assets, tmp_path) -> None:
    data = jsonl(tmp_path / "train.jsonl", GOOD, '{"messages": [}')
    code, message, log = run_launcher(tmp_path, config_for(assets, tmp_path, data))
    assert code == contract.EXIT_BAD_CONFIG, log
    assert message == (f"trainingArgs.data_path: {data} line 2: not valid JSON (Expecting value at column 15)\n")


def test_every_sample_too_long(assets, tmp_path) -> None:
    # Processed for real (in the watched child): only tokenizing can tell.
    long = {"messages": [{"role": "user", "content": "word " * 3000}, {"role": "assistant", "content": "answer"}]}
    data = jsonl(tmp_path / "train.jsonl", long, long)
    code, message, log = run_launcher(tmp_path, config_for(assets, tmp_path, data))
    assert code == contract.EXIT_BAD_CONFIG, log
    assert message == (
        f"trainingArgs.max_seq_len: every sample of {data} is 512 tokens or longer: nothing to train on\n"
    )


def process_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def test_a_stuck_data_child_is_killed_and_processing_retried(assets, tmp_path) -> None:
    """The issue's hang, made certain: once processing is under way (a progress bar moved),
    its whole process group is stopped (SIGSTOP: nothing can move, as with a worker stuck on a
    lock). The launcher must kill it after dataStallTimeoutSeconds and process again."""
    # Imports count as progress (data_child), so start-up is no gap: the longest legitimate one
    # measured under load is ~3 s (test_data_processing_stress asserts the same bound).
    stall = 10
    config = config_for(assets, tmp_path, assets.data_path, **{contract.CONFIG_KEY_DATA_STALL_TIMEOUT: stall})
    env = pod_env(config=config, node_rank=0, nnodes=1, port=free_port(), rdzv_id="stall", home=tmp_path)
    launcher = start_launcher("stall", env, tmp_path)
    ckpt = tmp_path / "ckpt"
    try:
        launcher.wait_for_log("data processing attempt 1: pid", 120)
        pid = int(re.search(r"data processing attempt 1: pid (\d+)", launcher.log()).group(1))
        launcher.wait_for_log("Converting samples into input_ids and labels", 120)
        os.killpg(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        deadline = stopped + stall + 180
        while ck.read_data_ready(ckpt) is None:
            assert launcher.process.poll() is None, launcher.tail()
            assert time.monotonic() < deadline, launcher.tail()
            time.sleep(0.5)
    finally:
        launcher.kill()
    log = launcher.log()
    assert f"data processing attempt 1/3 (pid {pid}): stalled" in log, log[-4000:]
    assert "data processing attempt 2/3" in log and ": done in" in log
    assert process_state(pid) in (None, "Z")  # killed with its group, not left stopped
    assert ck.read_data_ready(ckpt).num_samples == 8
