"""Issue 15, finding 3: data processing must not hang forever. Real instructlab-training
processing with a CPU burner alongside and one of its pool workers made to hang: the run must end
with the complete output, the hung attempt killed by the watchdog and processed again, and no
finished attempt may come near the stall timeout. One run proves that (its retry is the clean run
under load); benchmarks/data_processing_stress.py runs many of them, clean and hung, to find the
natural hang and size the timeout."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_stress import stress

from devtools.tiny_model import build_tiny_assets

pytestmark = [pytest.mark.training, pytest.mark.timeout(600)]

STALL_TIMEOUT = 10.0  # the longest legitimate gap measured under load is ~3-4 s


def test_a_run_under_load_with_a_stuck_pool_worker_recovers(tmp_path: Path) -> None:
    assets = build_tiny_assets(tmp_path / "assets", num_samples=24)
    result = stress(
        assets.model_dir, assets.data_path, tmp_path, runs=1, inject_every=1, stall_timeout=STALL_TIMEOUT, burners=1
    )
    print(result.summary())
    [run] = result.runs
    assert run.injected, result.summary()  # a pool worker was stopped while the pool was in use
    assert run.samples == 24, result.summary()
    # the stuck attempt was killed, a later one finished
    outcomes = [a.outcome for a in run.attempts]
    assert (outcomes[0], outcomes[-1]) == ("stalled", "done"), result.summary()
    assert result.max_gap < STALL_TIMEOUT
