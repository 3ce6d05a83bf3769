"""Two jobs on one network with the same rendezvous port (issue 15, finding 8): what happened on
the process-based dev node (since retired; its pods shared the host network), reproduced with real
launchers over loopback. Job B's node 0 runs first and holds the port; job A's node 0 cannot
bind it and job A's node 1 reaches job B's store: both must exit EXIT_RENDEZVOUS_CONFLICT with one
clear line, while job B's own node 1 joins and job B trains to completion as if nothing happened."""

from __future__ import annotations

from pathlib import Path

import pytest
from sft_launch_harness import free_port, pod_env, start_launcher, write_config

from devtools.tiny_model import TinyAssets, build_tiny_assets
from sft_core import checkpoints as ck
from sft_core import contract

pytestmark = [pytest.mark.training, pytest.mark.timeout(600)]

RUN_TIMEOUT = 300


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> TinyAssets:
    return build_tiny_assets(tmp_path_factory.mktemp("assets"), num_samples=8)


def _job(assets: TinyAssets, home: Path) -> Path:
    home.mkdir()
    return write_config(
        home / "training.json",
        model_dir=assets.model_dir,
        data_path=assets.data_path,
        ckpt_dir=home / "ckpt",
        num_epochs=1,
    )


def test_a_job_on_another_jobs_rendezvous_port_says_so(assets: TinyAssets, tmp_path: Path) -> None:
    port = free_port()
    homes = {name: tmp_path / name for name in ("b", "a")}
    configs = {name: _job(assets, home) for name, home in homes.items()}

    def start(job: str, rank: int):
        env = pod_env(config=configs[job], node_rank=rank, nnodes=2, port=port, rdzv_id=f"uid-{job}", home=homes[job])
        env[getattr(contract, "ENV_TERMINATION_LOG", "SFT_TERMINATION_LOG")] = str(homes[job] / f"termination-{rank}")
        return start_launcher(f"{job}-node{rank}", env, homes[job])

    b0 = start("b", 0)
    launchers = [b0]
    try:
        b0.wait_for_log(f"rendezvous id uid-b announced on port {port}", RUN_TIMEOUT)

        a0, a1 = start("a", 0), start("a", 1)
        launchers += [a0, a1]
        codes = (a0.wait(RUN_TIMEOUT), a1.wait(RUN_TIMEOUT))
        assert codes == (contract.EXIT_RENDEZVOUS_CONFLICT,) * 2, a0.tail() + a1.tail()
        node0 = (
            f"spec.rdzvPort: rendezvous port {port} cannot be bound on this pod (Address "
            "already in use): another process listens on it, e.g. another job's rendezvous on "
            "a shared host network; give one of the jobs a different spec.rdzvPort"
        )
        node1 = (
            f"spec.rdzvPort: the rendezvous at 127.0.0.1:{port} belongs to another job (rdzv "
            "id uid-b, ours uid-a): two jobs with the same spec.rdzvPort on one network; give "
            "one of them a different spec.rdzvPort"
        )
        assert f"{node0} (exit 5)" in a0.log(), a0.tail()
        assert f"{node1} (exit 5)" in a1.log(), a1.tail()
        assert "Traceback" not in a0.log() + a1.log()
        for rank, message in ((0, node0), (1, node1)):
            termination = homes["a"] / f"termination-{rank}"
            if termination.exists():  # the launcher's termination message, where it writes one
                assert termination.read_text() == f"{message}\n"
        # Job A never started a run, job B's rendezvous is untouched: its own node 1 joins.
        assert ck.read_run_records(homes["a"] / "ckpt") == []

        b1 = start("b", 1)
        launchers.append(b1)
        b1.wait_for_log(f"the rendezvous at 127.0.0.1:{port} is this job's (rdzv id uid-b)", RUN_TIMEOUT)
        for launcher in (b0, b1):
            launcher.wait_for_log("idling until the job is scaled down", RUN_TIMEOUT)
        assert ck.read_completion_marker(homes["b"] / "ckpt") is not None
        for launcher in (b0, b1):
            launcher.terminate()
        assert [b0.wait(60), b1.wait(60)] == [contract.EXIT_OK] * 2
    finally:
        for launcher in launchers:
            launcher.kill()
