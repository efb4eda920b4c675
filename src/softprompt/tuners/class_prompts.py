"""Learned class prompts for CLIP and SigLIP (CoOp, Zhou et al., IJCV 2022).

Each class's prompt is "[ctx_1 ... ctx_M] NAME." where the M context vectors are learned
and everything else, the text tower included, stays frozen. The settings are CoOp's:
`n_ctx` (N_CTX), `ctx_init` (CTX_INIT: words whose embeddings start the context; their
token count then sets M), `class_specific` (CSC: one context per class) and
`class_token_position` (CLASS_TOKEN_POSITION: end, middle or front).

The prompts are tokenized once, as CoOp does: with the context's placeholder words in
place, so that the word embeddings around the context (start token, class name, period,
end token, padding) are taken from the real tokenization and only the context's slots
are replaced. An untrained context initialised from "a photo of a" therefore gives
exactly the features of the text "a photo of a NAME." (tests/test_class_prompts.py).
"""

from __future__ import annotations

import torch
from torch import nn

from softprompt.backbones.clip_text import (
    ContrastiveModel,
    pool_positions,
    text_features_from_embeddings,
    token_embedding,
)

POSITIONS = ("end", "middle", "front")


class ClassPromptLearner(nn.Module):
    """The learned context and the frozen rest of every class's prompt.

    Args:
        model: the frozen CLIP or SigLIP model.
        tokenizer: its tokenizer.
        classnames: one name per class (underscores read as spaces, as CoOp does).
        n_ctx: context vectors (ignored when `ctx_init` is given).
        ctx_init: words that initialise the context; "" draws it from N(0, 0.02).
        class_specific: one context per class instead of one shared.
        position: where the class name goes: after, inside or before the context.
        pad_to: pad every prompt to this length (SigLIP reads its last position, so its
            prompts are padded to the length it was trained with); None pads to the longest.
    """

    def __init__(
        self,
        model: ContrastiveModel,
        tokenizer,
        classnames: list[str],
        n_ctx: int = 16,
        ctx_init: str = "",
        class_specific: bool = False,
        position: str = "end",
        pad_to: int | None = None,
    ) -> None:
        super().__init__()
        if position not in POSITIONS:
            raise ValueError(f"class_token_position must be one of {POSITIONS}; got {position!r}")
        embed = token_embedding(model)
        context_text = ctx_init.replace("_", " ").strip() or " ".join(["X"] * n_ctx)
        context_ids = tokenizer(context_text, add_special_tokens=False).input_ids
        names = [name.replace("_", " ") for name in classnames]
        padding = {"padding": "max_length", "max_length": pad_to} if pad_to else {"padding": True}
        encoded = tokenizer([f"{context_text} {name}." for name in names], return_tensors="pt",
                            **padding)  # fmt: skip
        ids = encoded.input_ids
        self.offset = _find(ids[0].tolist(), context_ids)
        self.n_ctx, self.position = len(context_ids), position
        with torch.no_grad():
            words = embed(ids.to(embed.weight.device))
            start = words[0, self.offset : self.offset + self.n_ctx].clone()
        if not ctx_init.strip():
            start = torch.empty_like(start).normal_(std=0.02)
        if class_specific:
            start = start.unsqueeze(0).repeat(len(names), 1, 1)
        self.ctx = nn.Parameter(start)
        self.register_buffer("prefix", words[:, : self.offset], persistent=False)
        self.register_buffer("suffix", words[:, self.offset + self.n_ctx :], persistent=False)
        self.register_buffer("positions", pool_positions(model, ids), persistent=False)
        # A name's tokens as they stand in the prompt (after a space, before the period).
        bare = len(tokenizer(f"{context_text}.", add_special_tokens=False).input_ids)
        self.name_lengths = [
            len(tokenizer(f"{context_text} {n}.", add_special_tokens=False).input_ids) - bare
            for n in names
        ]

    def forward(self, shift: torch.Tensor | None = None) -> torch.Tensor:
        """(classes, length, hidden) prompt embeddings; `shift` (hidden,) is added to
        every context vector (CoCoOp's image-conditioned token)."""
        ctx = self.ctx if self.ctx.dim() == 3 else self.ctx.expand(len(self.suffix), -1, -1)
        if shift is not None:
            ctx = ctx + shift
        if self.position == "end":
            return torch.cat([self.prefix, ctx, self.suffix], dim=1)
        rows = []
        for index, length in enumerate(self.name_lengths):
            name, rest = self.suffix[index, :length], self.suffix[index, length:]
            own = ctx[index]
            if self.position == "middle":
                half = self.n_ctx // 2
                parts = [self.prefix[index], own[:half], name, own[half:], rest]
            else:
                parts = [self.prefix[index], name, own, rest]
            rows.append(torch.cat(parts, dim=0))
        return torch.stack(rows)

    def text_features(self, model: ContrastiveModel, shift: torch.Tensor | None = None):
        """(classes, projection) features of the current prompts."""
        return text_features_from_embeddings(model, self(shift), self.positions)


def _find(sequence: list[int], part: list[int]) -> int:
    """Where `part` starts in `sequence` (the context's first slot)."""
    for start in range(len(sequence) - len(part) + 1):
        if sequence[start : start + len(part)] == part:
            return start
    raise ValueError("the context words tokenize differently inside the class prompt")
