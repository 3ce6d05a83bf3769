"""CPU mode (``SFT_DEVICE=cpu``): tests and small smoke runs only, never production.

instructlab-training 0.16.2 assumes CUDA in a handful of places. This module bypasses exactly
those, and nothing else, so that a tiny model trains on CPU with DDP over gloo:

- ``torch.cuda.set_device`` in main() and ``Tensor.cuda()`` on the start-up all-reduce tensor;
- ``torch.cuda.memory_stats()["num_alloc_retries"]`` in the per-step metrics (empty on CPU);
- ``BatchLossManager``'s hard-coded ``cuda:<local_rank>`` input device;
- the on-demand checkpoint's trigger all-reduce on ``torch.cuda.current_device()``;
- (speed, not correctness) main() asks for 8 DataLoader worker processes per rank; on a small CPU
  machine they compete with training for cores, so CPU mode loads batches in-process;
- FSDP (needs an accelerator): accelerate is built with ``cpu=True`` and no FSDP plugin, i.e.
  DDP; ``ACCELERATE_USE_CPU=1`` is also exported, since without it accelerate does no reduction
  across processes and the ranks' models diverge.

It is imported only when the launcher runs in CPU mode: the launcher applies ``apply_launcher_side``
in its own process, and points torchrun at ``cpu_worker.py`` instead of instructlab-training's
``main_ds.py``; that worker entry applies ``apply_worker_side`` and then runs ``main_ds`` as
``__main__``. GPU runs never import this module.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CPU_ENV = {
    "ACCELERATE_USE_CPU": "1",
    # CPU-only torch has no NCCL; gloo is the default for CPU tensors anyway.
    "CUDA_VISIBLE_DEVICES": "",
}

WORKER_ENTRY = Path(__file__).with_name("cpu_worker.py")


def training_args_overrides() -> dict:
    """TrainingArgs values CPU mode requires (flash attention needs CUDA)."""
    return {"disable_flash_attn": True}


# TrainingArgs fields whose non-default values take code paths CPU mode does not patch:
# validation runs on a hard-coded CUDA device inside main_ds itself.
UNSUPPORTED_ARGS = {"validation_split": 0.0}


def _require(owner: object, name: str) -> Any:
    # An upstream rename must fail loudly here, not turn into a silent CUDA call later.
    if not hasattr(owner, name):
        raise RuntimeError(
            f"CPU mode: instructlab-training changed, {owner!r} has no attribute {name!r}; "
            "update sft_trainer/cpu_mode.py"
        )
    return getattr(owner, name)


@contextlib.contextmanager
def launcher_side() -> Iterator[None]:
    """In the launcher process, around run_training: CPU env, and torchrun runs our worker entry."""
    from instructlab.training import main_ds

    _require(main_ds, "__file__")
    saved_env = {key: os.environ.get(key) for key in CPU_ENV}
    saved_file = main_ds.__file__
    os.environ.update(CPU_ENV)
    # run_training builds `torchrun ... <main_ds.__file__> --args`; the worker entry accepts the
    # same arguments and runs main_ds itself after patching.
    main_ds.__file__ = str(WORKER_ENTRY)
    try:
        yield
    finally:
        main_ds.__file__ = saved_file
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def apply_worker_side() -> None:
    """In each torchrun worker, before main_ds runs: replace the CUDA-only calls listed above."""
    import accelerate
    import torch
    import torch.distributed as dist
    from instructlab.training import accelerator as ilab_accelerator
    from instructlab.training import batch_loss_manager, on_demand_checkpoint, sampler

    os.environ.update(CPU_ENV)

    _require(torch.cuda, "set_device")
    torch.cuda.set_device = lambda device: None
    # The only .cuda() call on the CPU path is main()'s start-up all-reduce tensor.
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    _require(torch.cuda, "memory_stats")
    torch.cuda.memory_stats = lambda device=None: {"num_alloc_retries": 0}

    manager_cls = _require(batch_loss_manager, "BatchLossManager")
    original_init = manager_cls.__init__

    def cpu_manager_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        _require(self, "torch_device")
        self.torch_device = torch.device("cpu")

    manager_cls.__init__ = cpu_manager_init

    _require(on_demand_checkpoint, "check_checkpoint_requested")
    _require(on_demand_checkpoint, "trigger_file_exists")

    def cpu_check_checkpoint_requested() -> bool:
        # Same consensus as upstream (any rank saw the trigger -> all save), on a CPU tensor.
        flag = torch.tensor([1 if on_demand_checkpoint.trigger_file_exists() else 0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        requested = bool(flag.item() > 0)
        if requested:
            on_demand_checkpoint.remove_trigger_file()
        return requested

    on_demand_checkpoint.check_checkpoint_requested = cpu_check_checkpoint_requested

    _require(ilab_accelerator, "TransformersAccel")

    def cpu_accelerate(**_fsdp_or_deepspeed_kwargs) -> accelerate.Accelerator:
        # No FSDP plugin and no bf16 autocast: plain DDP over gloo.
        return accelerate.Accelerator(cpu=True)

    ilab_accelerator.TransformersAccel = cpu_accelerate

    # main_ds imports get_data_loader by name when runpy executes it, i.e. after this patch.
    original_get_data_loader = _require(sampler, "get_data_loader")

    def in_process_get_data_loader(*args, **kwargs):
        kwargs["num_workers"] = 0
        return original_get_data_loader(*args, **kwargs)

    sampler.get_data_loader = in_process_get_data_loader
