"""A tiny, offline, randomly initialised chat model and a matching messages JSONL.

Tests, the demo and smoke runs need a real Hugging Face model directory that instructlab-training
can load and process data for, without any model hub. This builds one in about a second:
a 2-layer Llama with random weights and a BPE tokenizer trained on the generated corpus, whose
chat template writes each message's content verbatim (so instructlab-training's unmask tokens pass
through untouched).

    python -m devtools.tiny_model --out DIR     # writes DIR/model and DIR/data.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from pydantic import BaseModel

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"

# Content verbatim, bos first, eos after every assistant turn: nothing for the unmasking logic to
# trip over, and every sample stays as long as its words.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)

_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
    "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu one two three "
    "four five six seven eight nine ten red green blue model train epoch batch loss step node"
).split()


class TinyAssets(BaseModel):
    """Where build_tiny_assets wrote the model directory and the training data."""

    model_dir: Path
    data_path: Path
    num_samples: int


def make_messages(num_samples: int, *, words_per_turn: int = 14, seed: int = 0) -> list[dict]:
    """Deterministic user/assistant samples; each is well over 20 tokens with the tiny tokenizer."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    rng = random.Random(seed)
    samples = []
    for index in range(num_samples):
        question = " ".join(rng.choice(_WORDS) for _ in range(words_per_turn))
        answer = " ".join(rng.choice(_WORDS) for _ in range(words_per_turn))
        samples.append(
            {
                "messages": [
                    {"role": "user", "content": f"question {index}: {question}"},
                    {"role": "assistant", "content": f"answer {index}: {answer}"},
                ]
            }
        )
    return samples


def write_messages_jsonl(path: Path, samples: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(sample) + "\n" for sample in samples))
    return path


def build_tokenizer(corpus: list[str], *, vocab_size: int = 256):
    """A byte-level BPE tokenizer trained on ``corpus``, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


TINY_SIZES = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}


def write_tiny_model(model_dir: Path, corpus: list[str], *, seed: int = 0, **sizes: int) -> Path:
    """Save a random-weight Llama (2 layers unless ``sizes`` override TINY_SIZES' LlamaConfig
    fields: benchmarks/gpu_smoke.py builds a larger one) and its tokenizer into ``model_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    model_dir = Path(model_dir)
    tokenizer = build_tokenizer(corpus)
    unknown = set(sizes) - set(TINY_SIZES)
    if unknown:
        raise ValueError(f"unknown model sizes {sorted(unknown)} (known: {sorted(TINY_SIZES)})")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        **{**TINY_SIZES, **sizes},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    return model_dir


def tiny_job_spec(**overrides: object) -> dict[str, object]:
    """The spec of a small valid CPU job (2 nodes, 2 epochs) that tests and benchmarks apply where
    no pod trains (the paths need not exist); ``overrides`` replace or add spec fields."""
    spec: dict[str, object] = {
        "modelPath": "/models/tiny",
        "dataPath": "/data/train.jsonl",
        "numEpochs": 2,
        "effectiveBatchSize": 4,
        "learningRate": 1e-4,
        "maxSeqLen": 128,
        "nnodes": 2,
        "device": "cpu",
        "checkpoints": {"claim": {"size": "1Gi"}},
    }
    spec.update(overrides)
    return spec


def build_tiny_assets(out_dir: Path, *, num_samples: int = 24, seed: int = 0) -> TinyAssets:
    """Write ``out_dir/model`` and ``out_dir/data.jsonl``; the same inputs give the same files.
    Modes are the writers' (safetensors saves its file 0600): to reach non-root pods the files go
    onto a claim (devtools.realstack.RealStack.fill_claim writes them 0644, as root writes files)."""
    out_dir = Path(out_dir)
    samples = make_messages(num_samples, seed=seed)
    corpus = [message["content"] for sample in samples for message in sample["messages"]]
    model_dir = write_tiny_model(out_dir / "model", corpus, seed=seed)
    data_path = write_messages_jsonl(out_dir / "data.jsonl", samples)
    return TinyAssets(model_dir=model_dir, data_path=data_path, num_samples=num_samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="writes OUT/model, OUT/data.jsonl")
    parser.add_argument("--samples", type=int, default=24, help="number of training samples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    assets = build_tiny_assets(args.out, num_samples=args.samples, seed=args.seed)
    print(assets.model_dump_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
