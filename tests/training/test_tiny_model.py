"""The offline tiny model the demo and tests train: loads, chats verbatim, long enough samples."""

from __future__ import annotations

import json

import pytest

from devtools.tiny_model import build_tiny_assets, main

pytestmark = pytest.mark.training


def test_tiny_assets_are_usable(tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assets = build_tiny_assets(tmp_path, num_samples=5)
    assert (assets.model_dir, assets.data_path) == (tmp_path / "model", tmp_path / "data.jsonl")
    samples = [json.loads(line) for line in assets.data_path.read_text().splitlines()]
    assert len(samples) == 5
    tokenizer = AutoTokenizer.from_pretrained(assets.model_dir)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "<pad>")
    messages = samples[0]["messages"]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == f"<s>{messages[0]['content']}{messages[1]['content']}</s>"
    for sample in samples:
        assert len(tokenizer.apply_chat_template(sample["messages"], return_dict=False)) >= 20
    model = AutoModelForCausalLM.from_pretrained(assets.model_dir)
    assert model.config.num_hidden_layers == 2
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    # Same inputs, same files: the data is deterministic.
    again = build_tiny_assets(tmp_path / "again", num_samples=5)
    assert again.data_path.read_text() == assets.data_path.read_text()


def test_cli_writes_model_and_data(tmp_path, capsys) -> None:
    assert main(["--out", str(tmp_path), "--samples", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["num_samples"] == 3
    assert (tmp_path / "model" / "config.json").is_file()
    assert len((tmp_path / "data.jsonl").read_text().splitlines()) == 3
