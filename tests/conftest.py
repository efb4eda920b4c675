"""Tiny backbones built from configs in the tests (random weights, tokenizers trained here).

They load through the same `from_pretrained` path a user's hub checkpoint does.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = (
    "the a cat dog bird sat on mat ran fast slow red blue green big small house tree "
    "summary of paper we propose method results show improve model data task learn "
    "one two three four five yes no animal color size what is it"
).split()


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def train_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the toy corpus (vocab ~200)."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<pad>", "</s>", "<s>"]
    trainer = trainers.BpeTrainer(
        vocab_size=240,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    if kind == "t5":
        # T5 appends </s> to every input and target.
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
        )
    elif kind == "llama":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", bos_token="<s>"
    )


# Weights are drawn wider than the usual 0.02 (initializer_range=0.3) so that a random
# tiny model reacts to its input at all and a soft prompt can learn the toy task.
def _build(kind: str, directory: Path) -> Path:
    torch.manual_seed(0)
    tokenizer = train_tokenizer(kind)
    vocab = len(tokenizer)
    pad, eos, bos = (tokenizer.convert_tokens_to_ids(t) for t in ("<pad>", "</s>", "<s>"))
    if kind == "gpt2":
        config = GPT2Config(
            vocab_size=vocab,
            n_positions=256,
            n_embd=32,
            n_layer=2,
            n_head=2,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=pad,
            initializer_range=0.3,
        )
        model = GPT2LMHeadModel(config)
    elif kind == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=pad,
            tie_word_embeddings=False,
            initializer_range=0.3,
        )
        model = LlamaForCausalLM(config)
    elif kind == "t5":
        config = T5Config(
            vocab_size=vocab,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            pad_token_id=pad,
            eos_token_id=eos,
            decoder_start_token_id=pad,
            dropout_rate=0.0,
        )
        model = T5ForConditionalGeneration(config)
    else:
        raise ValueError(kind)
    model.generation_config.pad_token_id = pad
    model.generation_config.eos_token_id = eos
    out = directory / f"tiny-{kind}"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def one_thread():
    """torch on one thread for the test: tiny models on a shared 2-core machine run
    fastest that way, and subprocess-driven tests match their one-thread children."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Directories of tiny GPT-2, Llama and T5 checkpoints (session-wide)."""
    root = tmp_path_factory.mktemp("models")
    return {kind: _build(kind, root) for kind in ("gpt2", "llama", "t5")}


def toy_task(n: int, seed: int = 0) -> list[dict[str, str]]:
    """A learnable mapping: the target is the colour word the input mentions."""
    rng = random.Random(seed)
    colors = ["red", "blue", "green"]
    rows = []
    for i in range(n):
        color = rng.choice(colors)
        words = [
            rng.choice(["cat", "dog", "bird", "house", "tree"]) for _ in range(rng.randint(1, 4))
        ]
        words.insert(rng.randint(0, len(words)), color)
        rows.append({"id": f"ex{i}", "input": " ".join(words), "target": color})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def toy_data(tmp_path) -> dict[str, Path]:
    return {
        "train": write_jsonl(tmp_path / "data" / "train.jsonl", toy_task(48, seed=1)),
        "val": write_jsonl(tmp_path / "data" / "val.jsonl", toy_task(12, seed=2)),
    }
