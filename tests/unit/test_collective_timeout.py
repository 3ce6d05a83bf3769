"""The collectives' timeout: what instructlab-training 0.16.2 and torch give it (pinned against
the installed packages), and the launcher's check of INSTRUCTLAB_NCCL_TIMEOUT_MS."""

from __future__ import annotations

import inspect
from datetime import timedelta

import pytest

from sft_core import contract
from sft_trainer.collective_timeout import DEFAULT_SECONDS, ENV_TIMEOUT_MS, collective_timeout_seconds
from sft_trainer.errors import ConfigError


def test_unset_is_torchs_default_without_a_backend() -> None:
    assert collective_timeout_seconds({}) == (1800, "torch's default for init_process_group() without a backend")


def test_set_in_milliseconds() -> None:
    assert collective_timeout_seconds({ENV_TIMEOUT_MS: "7200000"}) == (7200, ENV_TIMEOUT_MS)


@pytest.mark.parametrize("raw", ["0", "-5", "30m", "1e6", ""])
def test_bad_value_is_refused_with_exit_2(raw: str) -> None:
    with pytest.raises(ConfigError) as refused:
        collective_timeout_seconds({ENV_TIMEOUT_MS: raw})
    assert refused.value.message == (
        f"INSTRUCTLAB_NCCL_TIMEOUT_MS: must be a positive integer (milliseconds), got {raw!r}"
    )
    assert refused.value.exit_code == contract.EXIT_BAD_CONFIG


def test_instructlab_training_reads_the_variable_and_names_no_backend(monkeypatch) -> None:
    from instructlab.training import main_ds

    monkeypatch.setenv(ENV_TIMEOUT_MS, "90000")
    assert main_ds._get_collective_timeout() == timedelta(seconds=90)
    monkeypatch.delenv(ENV_TIMEOUT_MS)
    assert main_ds._get_collective_timeout() is None
    source = inspect.getsource(main_ds.main)
    assert "dist.init_process_group(timeout=timeout)" in source
    assert "dist.init_process_group()" in source


def test_torchs_default_for_a_group_without_a_backend_is_30_minutes() -> None:
    """init_process_group() with no backend takes default_pg_timeout for all its backends (NCCL
    included), not NCCL's own 10-minute default_pg_nccl_timeout."""
    from torch.distributed import distributed_c10d
    from torch.distributed.distributed_c10d import Backend

    assert distributed_c10d._get_default_timeout(Backend("undefined")) == timedelta(seconds=DEFAULT_SECONDS)
