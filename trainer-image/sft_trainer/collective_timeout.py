"""The timeout of the training's collectives (NCCL on GPUs, gloo in CPU mode).

instructlab-training 0.16.2's main_ds calls ``dist.init_process_group()`` with no backend and,
unless ``INSTRUCTLAB_NCCL_TIMEOUT_MS`` is set, no timeout. torch then takes its general default
(``default_pg_timeout``, 30 minutes) for every backend of the group, NCCL included: NCCL's own
10-minute default applies only to ``init_process_group("nccl")``. A rank stuck in a collective
(its peer died, a save on another rank takes longer) is aborted after that time.

The variable reaches the workers through torchrun's environment. The library raises a
ValueError in every worker for a value that is not a positive integer, which would be a
training failure retried maxRestarts times; the launcher refuses it before anything runs.
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import ConfigError

ENV_TIMEOUT_MS = "INSTRUCTLAB_NCCL_TIMEOUT_MS"
# torch.distributed.constants.default_pg_timeout, which init_process_group() without a backend
# uses (tests/unit/test_collective_timeout.py pins it against the installed torch).
DEFAULT_SECONDS = 30 * 60


def collective_timeout_seconds(env: Mapping[str, str]) -> tuple[float, str]:
    """(seconds, where the value comes from), or a ConfigError naming the variable."""
    raw = env.get(ENV_TIMEOUT_MS)
    if raw is None:
        return DEFAULT_SECONDS, "torch's default for init_process_group() without a backend"
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(ENV_TIMEOUT_MS, f"must be a positive integer (milliseconds), got {raw!r}")
    return value / 1000, ENV_TIMEOUT_MS
