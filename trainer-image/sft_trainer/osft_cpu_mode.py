"""CPU mode for OSFT (``SFT_DEVICE=cpu``): tests and smoke runs only, never production.

rhai-innovation-mini-trainer 0.9.0 assumes CUDA in five places; each worker replaces exactly
those at import time (the installed package is never edited), so a tiny model trains with
FSDP2 over gloo:

- ``init_distributed_environment``: an ``nccl`` process group with a CUDA ``device_id`` and
  ``torch.cuda.set_device`` (mini_trainer/utils.py), then sanity all-reduces on CUDA tensors;
- ``init_device_mesh("cuda", ...)`` for FSDP2 (setup_model_for_training.py);
- the distributed SVD of the OSFT set-up on ``torch.device("cuda", local_rank)`` (osft_utils.py);
- ``torch.cuda.reset_peak_memory_stats()`` and ``max_memory_allocated()`` on every step (train.py);
- ``import flash_attn`` unless ``TESTING=true`` selects SDPA (setup_model_for_training.py).

Applied by osft_worker before mini-trainer's ``main`` runs; GPU runs never import this module.
"""

from __future__ import annotations

import os
import types
from datetime import timedelta
from typing import Any

CPU_ENV = {
    "CUDA_VISIBLE_DEVICES": "",
    # mini-trainer's own switch: without flash_attn, SDPA instead of an ImportError.
    "TESTING": "true",
}


def _require(owner: object, name: str) -> Any:
    # An upstream rename must fail loudly here, not turn into a silent CUDA call later.
    if not hasattr(owner, name):
        raise RuntimeError(
            f"OSFT CPU mode: mini-trainer changed, {owner!r} has no attribute "
            f"{name!r}; update sft_trainer/osft_cpu_mode.py"
        )
    return getattr(owner, name)


class _CpuDevices(types.ModuleType):
    """``torch`` as osft_utils sees it: every attribute is torch's, except that a CUDA device
    is the CPU."""

    def __init__(self, torch_module: types.ModuleType):
        super().__init__("torch")
        self.__dict__["_torch"] = torch_module

    def __getattr__(self, name: str):
        return getattr(self._torch, name)

    def device(self, type_or_spec, index=None):  # noqa: A002 - torch.device's own parameter name
        spec = str(type_or_spec)
        if spec == "cuda" or spec.startswith("cuda:"):
            return self._torch.device("cpu")
        return self._torch.device(type_or_spec) if index is None else self._torch.device(type_or_spec, index)


def apply_worker_side(train_module: types.ModuleType) -> None:
    """In each torchrun worker, after ``mini_trainer.train`` is imported and before its main runs."""
    import torch
    import torch.distributed as dist
    from mini_trainer import osft_utils, setup_model_for_training

    os.environ.update(CPU_ENV)

    _require(train_module, "init_distributed_environment")
    log_rank_0 = _require(train_module, "log_rank_0")

    def cpu_init_distributed_environment() -> None:
        dist.init_process_group("gloo", timeout=timedelta(minutes=180))
        log_rank_0("CPU mode: gloo process group")
        dist.barrier()

    setattr(train_module, "init_distributed_environment", cpu_init_distributed_environment)  # a ModuleType

    init_device_mesh = _require(setup_model_for_training, "init_device_mesh")

    def cpu_device_mesh(device_type, *args, **kwargs):
        return init_device_mesh("cpu", *args, **kwargs)

    setup_model_for_training.init_device_mesh = cpu_device_mesh

    _require(osft_utils, "torch")
    osft_utils.torch = _CpuDevices(torch)

    _require(torch.cuda, "reset_peak_memory_stats")
    torch.cuda.reset_peak_memory_stats = lambda device=None: None
    _require(torch.cuda, "max_memory_allocated")
    torch.cuda.max_memory_allocated = lambda device=None: 0
