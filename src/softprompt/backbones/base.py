"""The small Protocol every backbone family implements, and the family registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from softprompt.data.records import TextExample
from softprompt.registry import Registry


@dataclass
class EncodeSettings:
    """How examples become token ids (from `data.*` and `task.*`)."""

    max_input_length: int = 512
    max_target_length: int = 128


@runtime_checkable
class Backbone(Protocol):
    """A frozen model that soft prompts can be put in front of.

    Attributes:
        family: registry name ("causal_lm", "seq2seq", ...).
        name_or_path: what the user pointed at (hub id, directory, embedded name).
        model: the Hugging Face model (frozen).
        tokenizer: its tokenizer.
    """

    family: str
    name_or_path: str
    model: nn.Module
    tokenizer: Any

    @property
    def hidden_size(self) -> int: ...

    def word_embeddings(self) -> torch.Tensor:
        """The input embedding matrix (V, D)."""
        ...

    def collate(
        self, examples: list[TextExample], settings: EncodeSettings, with_targets: bool
    ) -> dict[str, torch.Tensor]:
        """Tokenize and pad a batch (right-padded for training, left for generation)."""
        ...

    def loss_sum(
        self, batch: dict[str, torch.Tensor], prompt: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed cross-entropy over label tokens and the number of label tokens."""
        ...

    def generate(
        self, batch: dict[str, torch.Tensor], prompt: torch.Tensor | None, max_new_tokens: int
    ) -> list[str]:
        """Greedy generation with the prompt in place; returns the new text only."""
        ...


BACKBONES: Registry[type] = Registry("backbone family")


def freeze(model: nn.Module) -> nn.Module:
    """Freeze every parameter: the backbone never trains in prompt tuning."""
    for param in model.parameters():
        param.requires_grad_(False)
    return model
