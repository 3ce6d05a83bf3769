"""What each OSFT torchrun worker runs (osft_entry/train.py): mini-trainer's main, with exact resume
in any epoch and, in CPU mode, osft_cpu_mode's patches.

The resume bug (mini-trainer 0.9.0, train.py): resuming a full state saved at global step
``T`` in epoch ``e``, ``train()`` skips batches while a per-epoch counter is ``<= T``. The
counter restarts at 0 every epoch while ``T`` counts every epoch's steps, so from epoch 2 on
(``T`` >= steps per epoch) every epoch is skipped whole: zero steps trained, the final model
saved, exit 0. Within epoch 1 (``T`` < steps per epoch) it is right.

The fix leaves upstream's loop alone and feeds it what makes its count right: the resumed
epoch's iterator starts with ``e * steps_per_epoch`` placeholders, which the skip consumes
before the ``T - e * steps_per_epoch`` real batches already trained in that epoch. Should the
skip not end within that epoch (a save after its last step), every later epoch's iterator starts
with ``T`` placeholders until it does. Building the resumed epoch's DataLoader iterator draws one
number from torch's global RNG, which the uninterrupted run drew before the saved RNG snapshot:
that draw is undone, so the RNG stream matches too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from sft_core import contract


class ResumeError(RuntimeError):
    pass


def first_epoch_skip(step: int, epoch: int, steps_per_epoch: int) -> int:
    """Batches of ``epoch`` a state saved after ``step`` optimizer steps already trained."""
    done = step - epoch * steps_per_epoch
    if steps_per_epoch < 1 or not 0 <= done <= steps_per_epoch:
        raise ResumeError(
            f"full state at step {step} does not fall in epoch {epoch + 1} of "
            f"{steps_per_epoch} steps each (trained with other data or batch "
            "settings?); cannot resume it exactly"
        )
    return done


class ResumeAlignedLoader:
    """A train DataLoader whose iterators start with placeholders for upstream's skip to consume.

    ``target``: the step upstream skips to; ``done``: the real batches of the resumed epoch
    already trained. Everything but iteration is the wrapped loader's (len, sampler, ...).
    """

    def __init__(self, loader, *, target: int, done: int, rng=None):
        self._loader = loader
        self._target = target
        self._placeholders = target - done
        self._pending = True
        self._rng = rng  # torch, to undo the iterator's seed draw on the resumed epoch

    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name: str):
        return getattr(self.__dict__["_loader"], name)

    def __iter__(self) -> Iterator:
        if not self._pending:
            return iter(self._loader)
        return self._aligned()

    def _aligned(self) -> Iterator:
        placeholders, self._placeholders = self._placeholders, self._target
        if self._rng is not None:
            state = self._rng.get_rng_state()
            inner = iter(self._loader)
            self._rng.set_rng_state(state)
            self._rng = None
        else:
            inner = iter(self._loader)
        pulled = 0
        for _ in range(placeholders):
            pulled += 1
            yield None
        for batch in inner:
            pulled += 1
            if pulled > self._target:
                self._pending = False  # upstream's skip ended: later epochs iterate plainly
            yield batch


def exact_resume(train_fn, load_metadata, rng=None):
    """``mini_trainer.train.train`` wrapped: its data loader aligned when it resumes."""

    def train(*args, **kwargs):
        checkpoint = kwargs.get("resume_from_full_state_checkpoint")
        loader = kwargs.get("data_loader")
        if checkpoint and loader is not None:
            meta = load_metadata(checkpoint)
            step, epoch = int(meta["step"]), int(meta["epoch"])
            done = first_epoch_skip(step, epoch, len(loader))
            print(
                f"sft-trainer: exact resume from {checkpoint}: epoch {epoch + 1}, {done} of "
                f"{len(loader)} batches already trained (upstream alone would skip {step} "
                "in every epoch)",
                flush=True,
            )
            kwargs["data_loader"] = ResumeAlignedLoader(loader, target=step, done=done, rng=rng)
        return train_fn(*args, **kwargs)

    return train


def main() -> None:
    import torch
    from mini_trainer import train as train_module
    from mini_trainer.full_state_checkpoint import FullStateCheckpointer

    if os.environ.get(contract.ENV_DEVICE) == "cpu":
        from . import osft_cpu_mode

        osft_cpu_mode.apply_worker_side(train_module)
    train_module.train = exact_resume(train_module.train, FullStateCheckpointer.load_metadata, rng=torch)
    train_module.app()
