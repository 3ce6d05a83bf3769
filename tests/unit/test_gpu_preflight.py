"""The GPU preflight's decisions, exact messages; the real probe on this (CPU-only) machine."""

from __future__ import annotations

import logging

import pytest

from sft_core import contract
from sft_trainer import gpu_preflight
from sft_trainer.gpu_preflight import GpuFacts, GpuUnavailable, driver_note, gpu_problem

GOOD = GpuFacts(
    torch_version="2.13.0+cu128",
    torch_cuda="12.8",
    driver_cuda=12080,
    driver_error=None,
    cuda_available=True,
    device_count=8,
    visible_devices=None,
)


def facts(**change) -> GpuFacts:
    return GpuFacts(**{**GOOD.__dict__, **change})


@pytest.mark.parametrize(
    ("change", "nproc", "message"),
    [
        (
            {
                "torch_version": "2.13.0+cpu",
                "torch_cuda": None,
                "driver_cuda": None,
                "driver_error": "libcuda.so.1: cannot open shared object file",
                "cuda_available": False,
                "device_count": 0,
            },
            1,
            "spec.device is cuda but this image's torch 2.13.0+cpu has no CUDA build: use a CUDA "
            "trainer image (spec.pod.image), or spec.device: cpu",
        ),
        (
            {
                "driver_cuda": None,
                "driver_error": "libcuda.so.1: cannot open shared object file: No such file or directory",
                "cuda_available": False,
                "device_count": 0,
            },
            8,
            "spec.device is cuda but this pod has no NVIDIA driver (libcuda.so.1: cannot open shared "
            "object file: No such file or directory): it got no GPU; check its nvidia.com/gpu limit "
            "and the node's NVIDIA device plugin and container runtime",
        ),
        (
            {"driver_cuda": 11080, "cuda_available": False, "device_count": 0},
            8,
            "the node's NVIDIA driver supports CUDA 11.8 but this image's torch 2.13.0+cu128 is built "
            "for CUDA 12.8: update the node's driver to one for CUDA 12.x, or use an image built for "
            "CUDA 11",
        ),
        (
            {"cuda_available": False, "device_count": 0, "visible_devices": ""},
            1,
            "spec.device is cuda but torch sees no GPU in this pod (CUDA_VISIBLE_DEVICES='', driver CUDA 12.8)",
        ),
        (
            {"device_count": 4, "visible_devices": "0,1,2,3"},
            8,
            "spec.nprocPerNode is 8 but this pod sees 4 GPUs (CUDA_VISIBLE_DEVICES='0,1,2,3')",
        ),
        ({"device_count": 1}, 2, "spec.nprocPerNode is 2 but this pod sees 1 GPU (CUDA_VISIBLE_DEVICES=unset)"),
    ],
)
def test_gpu_problem_names_the_cause(change: dict, nproc: int, message: str) -> None:
    assert gpu_problem(facts(**change), nproc) == message


@pytest.mark.parametrize(
    ("change", "nproc"),
    [
        ({}, 8),
        ({}, 1),  # more GPUs than processes: torchrun uses the first nproc
        ({}, "gpu"),  # torchrun's "one process per GPU"
        ({"driver_cuda": 13000}, 8),  # a newer driver runs older CUDA
        ({"driver_cuda": 12020}, 8),  # same major, older minor: minor version compatibility
    ],
)
def test_gpu_problem_none_when_usable(change: dict, nproc) -> None:
    assert gpu_problem(facts(**change), nproc) is None


def test_no_gpu_with_nproc_gpu_is_still_refused() -> None:
    assert gpu_problem(facts(cuda_available=False, device_count=0), "gpu") == (
        "spec.device is cuda but torch sees no GPU in this pod (CUDA_VISIBLE_DEVICES=unset, driver CUDA 12.8)"
    )


def test_driver_note_for_minor_version_compatibility() -> None:
    assert driver_note(facts(driver_cuda=12020)) == (
        "the node's NVIDIA driver supports CUDA 12.2, older than torch's CUDA 12.8: running "
        "under CUDA minor version compatibility (a kernel shipped only as PTX for the newer "
        "toolkit cannot be JIT-compiled by this driver)"
    )
    assert driver_note(GOOD) is None
    assert driver_note(facts(driver_cuda=13010)) is None
    assert driver_note(facts(torch_cuda=None)) is None


def test_cuda_version_text() -> None:
    assert [gpu_preflight.cuda_version_text(v) for v in (12080, 12040, 11080, 13000)] == [
        "12.8",
        "12.4",
        "11.8",
        "13.0",
    ]


def test_describe() -> None:
    assert gpu_preflight.describe(facts(visible_devices="0")) == (
        "torch 2.13.0+cu128 (CUDA 12.8), driver CUDA 12.8, 8 GPU(s) visible (CUDA_VISIBLE_DEVICES='0')"
    )


def test_missing_driver_library_is_reported_not_raised() -> None:
    version, error = gpu_preflight.driver_cuda_version("libcuda-does-not-exist.so.1")
    assert version is None
    assert error.startswith("libcuda-does-not-exist.so.1: ")


def test_real_probe_on_this_machine_refuses_cuda_with_exit_2() -> None:
    """This machine's torch is the CPU build: the preflight must say so, as exit 2."""
    import torch

    if torch.version.cuda is not None:
        pytest.skip("torch here has CUDA; the CPU-build message needs a CPU-only torch")
    with pytest.raises(GpuUnavailable) as raised:
        gpu_preflight.check({"CUDA_VISIBLE_DEVICES": "0"}, 1, logging.getLogger("test"))
    assert raised.value.exit_code == contract.EXIT_BAD_CONFIG == 2
    assert raised.value.message == (
        f"spec.device is cuda but this image's torch {torch.__version__} has no CUDA build: use "
        "a CUDA trainer image (spec.pod.image), or spec.device: cpu"
    )


def test_launcher_in_cuda_mode_exits_2_with_one_line(tmp_path, monkeypatch) -> None:
    """The whole launcher: cuda mode on a CPU-only torch stops before data and torchrun, exit
    2 (the operator's ConfigRejected), the preflight's line as the termination message."""
    import json

    import torch

    from sft_trainer import launcher

    if torch.version.cuda is not None:
        pytest.skip("torch here has CUDA")
    ckpt = tmp_path / "ckpt"
    config = tmp_path / "training.json"
    config.write_text(
        json.dumps(
            {
                "numEpochs": 1,
                "trainingArgs": {
                    "model_path": str(tmp_path / "model"),
                    "data_path": str(tmp_path / "data.jsonl"),
                    "ckpt_output_dir": str(ckpt),
                    "num_epochs": 1,
                    "max_seq_len": 64,
                    "max_batch_len": 64,
                    "effective_batch_size": 1,
                    "learning_rate": 1e-5,
                },
            }
        )
    )
    for key, value in {
        "PET_NNODES": "1",
        "PET_NPROC_PER_NODE": "1",
        "PET_RDZV_ENDPOINT": "127.0.0.1:29500",
        "PET_RDZV_ID": "uid",
        "SFT_POD_NAME": "job-0",
        "SFT_CONFIG": str(config),
        "SFT_DEVICE": "cuda",
        "SFT_TERMINATION_LOG": str(tmp_path / "termination-log"),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SFT_POD_STATE_DIR", raising=False)
    assert launcher.main() == 2
    assert (tmp_path / "termination-log").read_text() == (
        f"spec.device is cuda but this image's torch {torch.__version__} has no CUDA build: use "
        "a CUDA trainer image (spec.pod.image), or spec.device: cpu\n"
    )
    assert not ckpt.exists()  # nothing touched: no data processed, no run record
