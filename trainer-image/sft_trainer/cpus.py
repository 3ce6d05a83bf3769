"""How many CPUs the container may use, and so how many processes data processing gets.

instructlab-training processes data with a pool of ``data_process_num_cpu_procs`` processes
(16 by default), whatever the pod was given. On a pod limited to a few CPUs, 16 forked workers
only contend for them, and the more workers a pool has, the likelier a fork-time deadlock
(datasets' pool, fast tokenizers). Unless the user chose a number, the pool is as large as the
CPUs the container may actually use, and never above upstream's default.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

UPSTREAM_DATA_PROCS = 16  # instructlab-training's TrainingArgs.data_process_num_cpu_procs default
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cgroup_cpu_limit(cpu_max: str) -> int | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` ("<quota> <period>" or "max <period>"), rounded up."""
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return math.ceil(quota / period)


def usable_cpus(cpu_max_file: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process may run on (affinity), lowered to the cgroup's CPU limit if it has one."""
    cpus = len(os.sched_getaffinity(0))
    try:
        limit = cgroup_cpu_limit(cpu_max_file.read_text())
    except OSError:
        limit = None
    return max(1, min(cpus, limit) if limit else cpus)


def data_process_procs(cpus: int) -> int:
    return max(1, min(UPSTREAM_DATA_PROCS, cpus))
