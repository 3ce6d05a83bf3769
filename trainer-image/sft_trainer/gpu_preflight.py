"""GPU preflight (cuda mode), before any data processing or torchrun: is there a CUDA build of
torch, an NVIDIA driver new enough for it, and nprocPerNode GPUs in this pod?

Without it a GPU problem surfaces as a worker traceback deep in instructlab-training, which the
operator counts as a training failure and retries maxRestarts times on the same node. A failed
preflight is a rejected configuration instead (exit 2, one line): the job fails at once with the
cause. ``gpu_facts`` reads the facts; ``gpu_problem`` and ``driver_note`` decide (pure).
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from dataclasses import dataclass

from sft_core import contract

from .errors import LauncherError

GPU_RESOURCE = "nvidia.com/gpu"
LIBCUDA = "libcuda.so.1"


class GpuUnavailable(LauncherError):
    """The pod cannot run the job's CUDA processes; retrying on the same pod cannot help."""

    exit_code = contract.EXIT_BAD_CONFIG


@dataclass(frozen=True)
class GpuFacts:
    torch_version: str
    torch_cuda: str | None  # torch.version.cuda, e.g. "12.8"; None: a CPU-only build
    driver_cuda: int | None  # cuDriverGetVersion, e.g. 12040 (12.4); None: no usable driver
    driver_error: str | None  # why driver_cuda is None
    cuda_available: bool
    device_count: int
    visible_devices: str | None  # CUDA_VISIBLE_DEVICES; None when unset


def cuda_version_text(version: int) -> str:
    """The driver API's encoding (1000 * major + 10 * minor) as "major.minor"."""
    return f"{version // 1000}.{version % 1000 // 10}"


def _torch_cuda_major_minor(torch_cuda: str) -> tuple[int, int]:
    parts = (torch_cuda.split(".") + ["0"])[:2]
    return int(parts[0]), int(parts[1])


def _visible(facts: GpuFacts) -> str:
    value = "unset" if facts.visible_devices is None else repr(facts.visible_devices)
    return f"CUDA_VISIBLE_DEVICES={value}"


def gpu_problem(facts: GpuFacts, nproc_per_node: int | str) -> str | None:
    """The one-line reason this pod cannot run nproc_per_node CUDA processes, or None."""
    if facts.torch_cuda is None:
        return (
            f"spec.device is cuda but this image's torch {facts.torch_version} has no CUDA "
            "build: use a CUDA trainer image (spec.pod.image), or spec.device: cpu"
        )
    if facts.driver_cuda is None:
        return (
            f"spec.device is cuda but this pod has no NVIDIA driver ({facts.driver_error}): "
            f"it got no GPU; check its {GPU_RESOURCE} limit and the node's NVIDIA device "
            "plugin and container runtime"
        )
    major, _ = _torch_cuda_major_minor(facts.torch_cuda)
    if facts.driver_cuda // 1000 < major:
        return (
            f"the node's NVIDIA driver supports CUDA {cuda_version_text(facts.driver_cuda)} "
            f"but this image's torch {facts.torch_version} is built for CUDA "
            f"{facts.torch_cuda}: update the node's driver to one for CUDA {major}.x, or use "
            f"an image built for CUDA {facts.driver_cuda // 1000}"
        )
    if not facts.cuda_available or facts.device_count == 0:
        return (
            f"spec.device is cuda but torch sees no GPU in this pod ({_visible(facts)}, "
            f"driver CUDA {cuda_version_text(facts.driver_cuda)})"
        )
    if isinstance(nproc_per_node, int) and facts.device_count < nproc_per_node:
        return (
            f"spec.nprocPerNode is {nproc_per_node} but this pod sees {facts.device_count} "
            f"GPU{'s' if facts.device_count != 1 else ''} ({_visible(facts)})"
        )
    return None


def driver_note(facts: GpuFacts) -> str | None:
    """A driver older than torch's CUDA within the same major version: it runs (CUDA minor
    version compatibility), except kernels that exist only as PTX for the newer toolkit."""
    if facts.torch_cuda is None or facts.driver_cuda is None:
        return None
    major, minor = _torch_cuda_major_minor(facts.torch_cuda)
    if facts.driver_cuda // 1000 == major and facts.driver_cuda % 1000 // 10 < minor:
        return (
            f"the node's NVIDIA driver supports CUDA {cuda_version_text(facts.driver_cuda)}, "
            f"older than torch's CUDA {facts.torch_cuda}: running under CUDA minor version "
            "compatibility (a kernel shipped only as PTX for the newer toolkit cannot be "
            "JIT-compiled by this driver)"
        )
    return None


def describe(facts: GpuFacts) -> str:
    driver = (
        f"driver CUDA {cuda_version_text(facts.driver_cuda)}"
        if facts.driver_cuda is not None
        else f"no driver ({facts.driver_error})"
    )
    return (
        f"torch {facts.torch_version} (CUDA {facts.torch_cuda or 'none'}), {driver}, "
        f"{facts.device_count} GPU(s) visible ({_visible(facts)})"
    )


def driver_cuda_version(library: str = LIBCUDA) -> tuple[int | None, str | None]:
    """The CUDA version the installed driver supports, from the driver API itself (no context
    is created, no GPU needed): (version, None) or (None, why not)."""
    try:
        libcuda = ctypes.CDLL(library)
    except OSError as error:
        return None, str(error)  # names the library: "libcuda.so.1: cannot open shared object file: ..."
    version = ctypes.c_int(0)
    result = libcuda.cuDriverGetVersion(ctypes.byref(version))
    if result != 0:
        return None, f"cuDriverGetVersion returned CUresult {result}"
    return version.value, None


def gpu_facts(env: Mapping[str, str]) -> GpuFacts:
    import torch

    torch_cuda = torch.version.cuda
    driver, driver_error = driver_cuda_version()
    # Asking torch only when it has CUDA and a driver exists: it initializes the driver.
    usable = torch_cuda is not None and driver is not None
    available = bool(usable and torch.cuda.is_available())
    return GpuFacts(
        torch_version=torch.__version__,
        torch_cuda=torch_cuda,
        driver_cuda=driver,
        driver_error=driver_error,
        cuda_available=available,
        device_count=torch.cuda.device_count() if available else 0,
        visible_devices=env.get("CUDA_VISIBLE_DEVICES"),
    )


def check(env: Mapping[str, str], nproc_per_node: int | str, log) -> GpuFacts:
    """Raise GpuUnavailable (exit 2) with the reason, or log what was found and return it."""
    facts = gpu_facts(env)
    problem = gpu_problem(facts, nproc_per_node)
    if problem is not None:
        raise GpuUnavailable(problem)
    log.info("GPU preflight: %s; nprocPerNode %s", describe(facts), nproc_per_node)
    if (note := driver_note(facts)) is not None:
        log.warning("%s", note)
    return facts
