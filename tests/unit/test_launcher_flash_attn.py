"""The CUDA image without flash_attn (its default build: flash-attn comes only from a wheelhouse):
the launcher turns instructlab-training's flash attention off, instead of the job failing at
`import flash_attn` on the first Ampere-or-newer GPU; an explicit request for it is refused."""

from __future__ import annotations

import pytest

from sft_trainer.errors import ConfigError
from sft_trainer.launch_config import parse_config, training_args_kwargs

CONFIG = {"trainingArgs": {"model_path": "/m", "data_path": "/d.jsonl", "ckpt_output_dir": "/checkpoints/run"}}
FIELDS = {
    "model_path",
    "data_path",
    "ckpt_output_dir",
    "data_output_dir",
    "process_data",
    "on_demand_checkpointing",
    "disable_flash_attn",
}


def kwargs(*, flash_attn_installed: bool, cpu: bool = False, **training_args) -> dict:
    config = parse_config({"trainingArgs": {**CONFIG["trainingArgs"], **training_args}})
    return training_args_kwargs(config, FIELDS, cpu=cpu, usable_cpus=2, flash_attn_installed=flash_attn_installed)


def test_without_flash_attn_the_launcher_disables_it() -> None:
    assert kwargs(flash_attn_installed=False) == {
        "model_path": "/m",
        "data_path": "/d.jsonl",
        "ckpt_output_dir": "/checkpoints/run",
        "data_output_dir": "/checkpoints/run/data",
        "process_data": False,
        "on_demand_checkpointing": True,
        "disable_flash_attn": True,
    }
    assert kwargs(flash_attn_installed=False, disable_flash_attn=True)["disable_flash_attn"] is True


def test_with_flash_attn_instructlab_trainings_default_stands() -> None:
    assert "disable_flash_attn" not in kwargs(flash_attn_installed=True)
    assert kwargs(flash_attn_installed=True, disable_flash_attn=False)["disable_flash_attn"] is False


def test_asking_for_flash_attention_without_flash_attn_names_the_field() -> None:
    with pytest.raises(ConfigError) as raised:
        kwargs(flash_attn_installed=False, disable_flash_attn=False)
    assert str(raised.value) == (
        "trainingArgs.disable_flash_attn: is false but this image has no flash_attn (the trainer "
        "image's CUDA flavour installs it only from a wheelhouse): leave it out"
    )


def test_cpu_mode_disables_it_whatever_is_installed() -> None:
    assert kwargs(flash_attn_installed=True, cpu=True)["disable_flash_attn"] is True
