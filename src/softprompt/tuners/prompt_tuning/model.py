"""The soft prompt module: it owns its parameters and nothing else."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from softprompt.tuners.prompt_tuning.config import PromptTuningConfig


class SoftPrompt(nn.Module):
    """`num_virtual_tokens` learnable vectors placed in front of a frozen model's input.

    The parameter is named `embedding.weight`, as in PEFT's `PromptEmbedding`, so the
    saved tensor is PEFT's `prompt_embeddings` without renaming. With an `encoder`
    (a reparameterisation, see reparam.py) the prompt is the encoder's output for those
    embeddings, and both train together.

    Args:
        num_virtual_tokens: P, the prompt length.
        token_dim: D, the backbone's embedding width.
        encoder: None, or a module mapping the (P, D) embeddings to the (P, D) prompt.
    """

    def __init__(
        self, num_virtual_tokens: int, token_dim: int, encoder: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_virtual_tokens, token_dim)
        self.encoder = encoder

    @property
    def num_virtual_tokens(self) -> int:
        return self.embedding.num_embeddings

    @property
    def token_dim(self) -> int:
        return self.embedding.embedding_dim

    def vectors(self) -> torch.Tensor:
        """(P, D) the prompt: the embeddings, or the encoder's output for them.

        Without gradients (evaluation, generation, saving) the encoder runs in eval mode
        whatever its mode, so what validation scores is exactly what gets saved.
        """
        weight = self.embedding.weight
        if self.encoder is None:
            return weight
        if torch.is_grad_enabled():
            return self.encoder(weight)
        with _eval_mode(self.encoder):
            return self.encoder(weight)

    @torch.no_grad()
    def merged(self) -> torch.Tensor:
        """(P, D) float32 copy of the prompt as it stands, the encoder folded in."""
        return self.vectors().detach().float().clone()

    def forward(self, batch_size: int) -> torch.Tensor:
        """Returns the prompt repeated over the batch, shape (batch_size, P, D)."""
        return self.vectors().unsqueeze(0).expand(batch_size, -1, -1)

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
        The P-tuning encoders (`mlp`, `lstm`) get N(0, 1) inputs instead, as in PEFT; the
        residual encoder starts as the identity, so its prompt starts at these vectors.
        """
        weight = word_embeddings.detach().float()
        p = self.num_virtual_tokens
        if config.reparameterize in ("mlp", "lstm"):
            # P-tuning's encoder input: N(0, 1), nn.Embedding's default init, as in PEFT.
            values = torch.randn(p, weight.shape[1], generator=generator)
        elif config.init_method == "RANDOM":
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


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Run `module` in eval mode (no dropout), then restore its modes."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.train(training)
