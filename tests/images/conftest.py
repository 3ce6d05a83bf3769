"""Fixtures of the image tier: both images built once per session by scripts/build-images.sh
(helpers and the tier's requirements: images_harness.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest
from images_harness import CUDA_OPT_IN, CUDA_OPT_IN_REASON, docker, run_build


@pytest.fixture(scope="session")
def built_images() -> dict[str, str]:
    """Build (or find cached) both images once per session; the names the script printed."""
    if docker("info", check=False, timeout=60).returncode != 0:
        pytest.fail("docker info fails: start dockerd (see docs/images.md)", pytrace=False)
    names, log, elapsed = run_build()
    sys.stderr.write(f"\n{log}images built in {elapsed:.0f} s\n")
    for key in ("SFT_BASE_IMAGE", "SFT_OPERATOR_IMAGE", "SFT_TRAINER_IMAGE"):
        assert key in names, f"build-images.sh printed no {key}=...:\n{names}"
    return names


@pytest.fixture(scope="session")
def operator_image(built_images: dict[str, str]) -> str:
    return built_images["SFT_OPERATOR_IMAGE"]


@pytest.fixture(scope="session")
def trainer_image(built_images: dict[str, str]) -> str:
    return built_images["SFT_TRAINER_IMAGE"]


@pytest.fixture(scope="session")
def cuda_trainer_image() -> str:
    """The trainer's CUDA flavour (build-images.sh, SFT_TRAINER_FLAVOR=cuda), opt-in."""
    if os.environ.get(CUDA_OPT_IN) != "1":
        pytest.skip(CUDA_OPT_IN_REASON)
    if docker("info", check=False, timeout=60).returncode != 0:
        pytest.fail("docker info fails: start dockerd (see docs/images.md)", pytrace=False)
    names, log, elapsed = run_build({"SFT_TRAINER_FLAVOR": "cuda", "SFT_IMAGES_ONLY": "trainer"})
    sys.stderr.write(f"\n{log}CUDA trainer image built in {elapsed:.0f} s\n")
    assert "SFT_TRAINER_CUDA_IMAGE" in names, f"build-images.sh printed no SFT_TRAINER_CUDA_IMAGE=...:\n{names}"
    return names["SFT_TRAINER_CUDA_IMAGE"]


@pytest.fixture
def container_names() -> Iterator[list[str]]:
    """Names of containers a test starts; removed afterwards whatever happened."""
    names: list[str] = []
    yield names
    for name in names:
        docker("rm", "--force", name, check=False, timeout=120)
