"""The soft prompt module: it owns its parameters and nothing else."""

from __future__ import annotations

import math

import torch
from torch import nn

from softprompt.tuners.prompt_tuning.config import PromptTuningConfig


class SoftPrompt(nn.Module):
    """`num_virtual_tokens` learnable vectors placed in front of a frozen model's input.

    The parameter is named `embedding.weight`, as in PEFT's `PromptEmbedding`, so the
    saved tensor is PEFT's `prompt_embeddings` without renaming.

    Args:
        num_virtual_tokens: P, the prompt length.
        token_dim: D, the backbone's embedding width.
    """

    def __init__(self, num_virtual_tokens: int, token_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_virtual_tokens, token_dim)

    @property
    def num_virtual_tokens(self) -> int:
        return self.embedding.num_embeddings

    @property
    def token_dim(self) -> int:
        return self.embedding.embedding_dim

    def forward(self, batch_size: int) -> torch.Tensor:
        """Returns the prompt repeated over the batch, shape (batch_size, P, D)."""
        return self.embedding.weight.unsqueeze(0).expand(batch_size, -1, -1)

    @torch.no_grad()
    def initialize(
        self,
        config: PromptTuningConfig,
        word_embeddings: torch.Tensor,
        tokenizer=None,
        generator: torch.Generator | None = None,
    ) -> None:
        """Fill the prompt from the backbone's embedding matrix (V, D).

        RANDOM draws from a normal with the matrix's per-dimension mean and std, so the
        prompt starts at the scale the model expects (raw N(0, 1) is far too large for
        most LMs). VOCAB copies rows of ordinary (non-special) tokens. TEXT embeds
        `init_text` (without special tokens), repeated or cut to length, as PEFT does.
        """
        weight = word_embeddings.detach().float()
        p = self.num_virtual_tokens
        if config.init_method == "RANDOM":
            mean, std = weight.mean(dim=0), weight.std(dim=0)
            noise = torch.randn(p, weight.shape[1], generator=generator)
            values = mean + noise * std
        elif config.init_method == "VOCAB":
            candidates = _ordinary_token_ids(tokenizer, weight.shape[0])
            pick = torch.randint(len(candidates), (p,), generator=generator)
            values = weight[candidates[pick]]
        else:
            if tokenizer is None:
                raise ValueError("init_method TEXT needs the backbone's tokenizer")
            ids = tokenizer(config.init_text, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ValueError(f"init_text {config.init_text!r} tokenizes to nothing")
            ids = (ids * math.ceil(p / len(ids)))[:p]
            values = weight[torch.tensor(ids)]
        self.embedding.weight.copy_(values.to(self.embedding.weight.dtype))


def _ordinary_token_ids(tokenizer, vocab_size: int) -> torch.Tensor:
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    added = set((getattr(tokenizer, "added_tokens_decoder", None) or {}).keys())
    limit = min(vocab_size, len(tokenizer)) if tokenizer is not None else vocab_size
    ids = [i for i in range(limit) if i not in special and i not in added]
    return torch.tensor(ids or list(range(vocab_size)))
