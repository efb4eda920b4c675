"""Pieces the text families share: padding, generation settings, loading."""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import AutoTokenizer, GenerationConfig

from softprompt.backbones.base import freeze

logger = logging.getLogger("softprompt")


def pad_batch(rows: list[list[int]], pad_value: int, side: str = "right") -> torch.Tensor:
    """Pad lists of ids to one (B, T) tensor on the given side."""
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), pad_value, dtype=torch.long)
    for i, row in enumerate(rows):
        if not row:
            continue
        if side == "right":
            out[i, : len(row)] = torch.tensor(row)
        else:
            out[i, width - len(row) :] = torch.tensor(row)
    return out


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """Load a tokenizer and make sure it can pad (falls back to EOS, as most recipes do)."""
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer of {path!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def greedy_config(model: Any, tokenizer, max_new_tokens: int) -> GenerationConfig:
    """Greedy decoding, whatever sampling settings the checkpoint ships with."""
    config = GenerationConfig.from_model_config(model.config)
    if getattr(model, "generation_config", None) is not None:
        config = GenerationConfig(**model.generation_config.to_dict())
    config.do_sample = False
    config.num_beams = 1
    config.temperature = None
    config.top_p = None
    config.top_k = None
    config.max_new_tokens = max_new_tokens
    config.max_length = None
    config.pad_token_id = tokenizer.pad_token_id
    if config.eos_token_id is None:
        config.eos_token_id = tokenizer.eos_token_id
    return config


def prepare_frozen(model: torch.nn.Module) -> torch.nn.Module:
    """Eval-mode-agnostic freeze; dropout follows train()/eval() like any HF model."""
    freeze(model)
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    return model
