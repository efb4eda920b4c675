"""Learned class prompts for CLIP and SigLIP (CoOp, Zhou et al., IJCV 2022).

Each class's prompt is "[ctx_1 ... ctx_M] NAME." where the M context vectors are learned
and everything else, the text tower included, stays frozen. The settings are CoOp's:
`n_ctx` (N_CTX), `ctx_init` (CTX_INIT: words whose embeddings start the context; their
token count then sets M), `class_specific` (CSC: one context per class) and
`class_token_position` (CLASS_TOKEN_POSITION: end, middle or front).

Each set of class names is tokenized once (and kept), as CoOp does: with the context's
placeholder words in place, so that the word embeddings around the context (start token, class name, period,
end token, padding) are taken from the real tokenization and only the context's slots
are replaced. An untrained context initialised from "a photo of a" therefore gives
exactly the features of the text "a photo of a NAME." (tests/test_class_prompts.py).
A shared context is not tied to its classes: it reads any class names (base-to-novel
evaluation), while a class-specific one answers for the classes it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from softprompt.backbones.clip_text import (
    ContrastiveModel,
    pool_positions,
    text_features_from_embeddings,
    token_embedding,
)

POSITIONS = ("end", "middle", "front")


@dataclass(frozen=True)
class Layout:
    """The frozen word embeddings around the context of one set of class prompts."""

    prefix: torch.Tensor  # (C, start, D): the start token
    suffix: torch.Tensor  # (C, rest, D): name (end position), period, end token, padding
    positions: torch.Tensor  # (C,) where each prompt is pooled
    name_lengths: tuple[int, ...]  # each name's tokens as they stand in the prompt


class ClassPromptLearner(nn.Module):
    """The learned context of every class's prompt.

    Args:
        model: the frozen CLIP or SigLIP model (read here, never registered).
        tokenizer: its tokenizer.
        classnames: the training classes (underscores read as spaces, as CoOp does): the
            default names, and the rows of a class-specific context.
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
        self.context_text = ctx_init.replace("_", " ").strip() or " ".join(["X"] * n_ctx)
        context_ids = tokenizer(self.context_text, add_special_tokens=False).input_ids
        self.n_ctx, self.position, self.pad_to = len(context_ids), position, pad_to
        self.classnames = tuple(classnames)
        self.tokenizer = tokenizer
        with torch.no_grad():
            start = embed(torch.tensor(context_ids, device=embed.weight.device)).clone()
        if not ctx_init.strip():
            start = torch.empty_like(start).normal_(std=0.02)
        if class_specific:
            start = start.unsqueeze(0).repeat(len(self.classnames), 1, 1)
        self.ctx = nn.Parameter(start)
        self._layouts: dict[tuple, Layout] = {}

    @property
    def class_specific(self) -> bool:
        return self.ctx.dim() == 3

    def layout(self, model: ContrastiveModel, names: tuple[str, ...]) -> Layout:
        """The frozen parts of the prompts of `names` (tokenized once per set of names)."""
        embed = token_embedding(model)
        key = (names, embed.weight.device)
        if key not in self._layouts:
            self._layouts[key] = self._tokenize(model, names)
        return self._layouts[key]

    @torch.no_grad()
    def _tokenize(self, model: ContrastiveModel, names: tuple[str, ...]) -> Layout:
        embed, tokenizer, context = token_embedding(model), self.tokenizer, self.context_text
        spaced = [name.replace("_", " ") for name in names]
        padding = (
            {"padding": "max_length", "max_length": self.pad_to}
            if self.pad_to
            else {"padding": True}
        )
        ids = tokenizer([f"{context} {name}." for name in spaced], return_tensors="pt",
                        **padding).input_ids  # fmt: skip
        context_ids = tokenizer(context, add_special_tokens=False).input_ids
        offset = _find(ids[0].tolist(), context_ids)
        words = embed(ids.to(embed.weight.device))
        bare = len(tokenizer(f"{context}.", add_special_tokens=False).input_ids)
        lengths = tuple(
            len(tokenizer(f"{context} {n}.", add_special_tokens=False).input_ids) - bare
            for n in spaced
        )
        return Layout(
            prefix=words[:, :offset],
            suffix=words[:, offset + self.n_ctx :],
            positions=pool_positions(model, ids).to(embed.weight.device),
            name_lengths=lengths,
        )

    def contexts(self, names: tuple[str, ...]) -> torch.Tensor:
        """(C, M, D) each class's context: the shared one, or its own (class-specific)."""
        if not self.class_specific:
            return self.ctx.expand(len(names), -1, -1)
        missing = [n for n in names if n not in self.classnames]
        if missing:
            raise ValueError(
                f"class-specific contexts were learned for {', '.join(self.classnames)}; "
                f"{', '.join(missing)} has none (a shared context reads any class names)"
            )
        return self.ctx[[self.classnames.index(n) for n in names]]

    def forward(self, layout: Layout, ctx: torch.Tensor) -> torch.Tensor:
        """(C, length, hidden) prompt embeddings with the contexts `ctx` (C, M, D)."""
        if self.position == "end":
            return torch.cat([layout.prefix, ctx, layout.suffix], dim=1)
        rows = []
        for index, length in enumerate(layout.name_lengths):
            name, rest = layout.suffix[index, :length], layout.suffix[index, length:]
            own = ctx[index]
            if self.position == "middle":
                half = self.n_ctx // 2
                parts = [layout.prefix[index], own[:half], name, own[half:], rest]
            else:
                parts = [layout.prefix[index], name, own, rest]
            rows.append(torch.cat(parts, dim=0))
        return torch.stack(rows)

    def text_features(
        self,
        model: ContrastiveModel,
        shift: torch.Tensor | None = None,
        names: tuple[str, ...] | None = None,
    ) -> torch.Tensor:
        """(C, E) features of the prompts of `names` (default: the training classes).

        Args:
            shift: (D,) added to every context vector, or (U, D): one shift per image
                (CoCoOp's image-conditioned token), giving (U, C, E).
        """
        names = tuple(names or self.classnames)
        layout, ctx = self.layout(model, names), self.contexts(names)
        if shift is None or shift.dim() == 1:
            ctx = ctx if shift is None else ctx + shift
            return text_features_from_embeddings(model, self(layout, ctx), layout.positions)
        shifted = ctx.unsqueeze(0) + shift[:, None, None, :]  # (U, C, M, D)
        prompts = torch.cat([self(layout, own) for own in shifted])
        positions = layout.positions.repeat(len(shift))
        features = text_features_from_embeddings(model, prompts, positions)
        return features.view(len(shift), len(names), -1)


def _find(sequence: list[int], part: list[int]) -> int:
    """Where `part` starts in `sequence` (the context's first slot)."""
    for start in range(len(sequence) - len(part) + 1):
        if sequence[start : start + len(part)] == part:
            return start
    raise ValueError("the context words tokenize differently inside the class prompt")
