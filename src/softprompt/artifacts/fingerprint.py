"""The base-model fingerprint saved adapters record, so one loaded onto the wrong base
model fails loudly instead of producing garbage."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch


@torch.no_grad()
def fingerprint(word_embeddings: torch.Tensor, tokenizer) -> dict[str, Any]:
    """Identify a base model by its embedding matrix and tokenizer.

    Hashes ~1k evenly spaced rows rounded to bfloat16, so a model loaded in float32 or
    bfloat16 gets the same fingerprint, and hashing stays cheap for big vocabularies.

    Args:
        word_embeddings: (V, D) the input embedding matrix.
        tokenizer: anything with `get_vocab()`, or None.

    Returns:
        {"embedding", "tokenizer"} (16 hex digits each), "vocab_size" V, "hidden_size" D.
    """
    vocab_rows, dim = word_embeddings.shape
    stride = max(1, vocab_rows // 1024)
    rows = word_embeddings[::stride].detach().to("cpu", torch.bfloat16).contiguous()
    emb = hashlib.sha256(f"{vocab_rows}x{dim}".encode())
    emb.update(rows.view(torch.int16).numpy().tobytes())
    vocab = sorted(tokenizer.get_vocab().items()) if tokenizer is not None else []
    tok = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()
    return {
        "embedding": emb.hexdigest()[:16],
        "tokenizer": tok[:16],
        "vocab_size": vocab_rows,
        "hidden_size": dim,
    }
