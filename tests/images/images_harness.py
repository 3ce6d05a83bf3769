"""Helpers of the image tier (tests/images/conftest.py has the fixtures).

The image tier: both images built for real by scripts/build-images.sh (the local base, the
operator image, the trainer image's CPU flavour), then run with docker.

Needs a running docker daemon, mmdebstrap (the script installs it with apt-get) and the local
CPU torch wheel. Cold: ≈20 min on 2 cores (base ≈3 min, operator ≈3, trainer ≈12); warm, docker's
cache makes the build take seconds. Nothing is skipped: without docker every test ERRORs with
the reason. The one opt-in: the CUDA flavour's tests (test_cuda_image.py) run only with
SFT_TEST_CUDA_IMAGE=1 (`make images-test-cuda`), skipped with CUDA_OPT_IN_REASON otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "scripts" / "build-images.sh"
BUILD_TIMEOUT = 45 * 60
CUDA_OPT_IN = "SFT_TEST_CUDA_IMAGE"
# Measured here (docs/images.md): the image is 6.3 GB, its cold build 195-287 s with ≈3 GB of
# wheels downloaded; too large for every run of the tier.
CUDA_OPT_IN_REASON = (
    f"the CUDA trainer image (6.3 GB, a cold build ≈3-5 min downloading ≈3 GB "
    f"from the package index) is built and tested only with {CUDA_OPT_IN}=1 "
    "(make images-test-cuda; docs/images.md)"
)


def docker_cli() -> str:
    found = os.environ.get("DOCKER") or shutil.which("docker")
    if not found:
        pytest.fail("no docker CLI on PATH (set DOCKER=)", pytrace=False)
    return found


def docker(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([docker_cli(), *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def run_build(env: dict[str, str] | None = None) -> tuple[dict[str, str], str, float]:
    """scripts/build-images.sh with `env` added to ours: (the KEY=VALUE names it prints last, its
    stderr, seconds)."""
    start = time.monotonic()
    proc = subprocess.run(
        [str(BUILD_SCRIPT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        env={**os.environ, **(env or {})},
    )
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        pytest.fail(f"scripts/build-images.sh exited {proc.returncode}:\n{proc.stderr[-6000:]}", pytrace=False)
    names = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return names, proc.stderr, elapsed
