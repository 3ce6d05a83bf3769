"""Issue 15, finding 3: data processing must not hang forever. Real instructlab-training
processing, one run after another with a CPU burner alongside and a pool worker made to hang in
every second run: each run must end with the complete output, the hung attempts killed by the
watchdog and processed again. benchmarks/data_processing_stress.py runs more of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_stress import stress
from devtools.tiny_model import build_tiny_assets

pytestmark = [pytest.mark.training, pytest.mark.timeout(600)]

RUNS = 3           # about 20 s each on 2 idle cores (imports), plus ~15 s for the hang
INJECT_EVERY = 2   # run 2 gets a stuck pool worker
STALL_TIMEOUT = 10.0  # the longest legitimate gap measured under load is ~3 s


def test_many_runs_under_load_never_hang(tmp_path: Path) -> None:
    assets = build_tiny_assets(tmp_path / "assets", num_samples=24)
    result = stress(assets.model_dir, assets.data_path, tmp_path, runs=RUNS,
                    inject_every=INJECT_EVERY, stall_timeout=STALL_TIMEOUT, burners=1)
    print(result.summary())
    assert [run.samples for run in result.runs] == [24] * RUNS, result.summary()
    assert all(run.attempts[-1].outcome == "done" for run in result.runs)
    injected = [run for run in result.runs if run.injected]
    assert len(injected) == RUNS // INJECT_EVERY, result.summary()
    for run in injected:  # the stuck attempt was killed and the next one finished
        assert [a.outcome for a in run.attempts][:1] == ["stalled"], result.summary()
    assert result.recovered >= len(injected)
    assert result.max_gap < STALL_TIMEOUT
