"""What trains: the `Tuner` Protocol, the `TUNERS` registry and the prompt input contract.

A tuner is one method of adapting a frozen backbone (a soft prompt, LoRA, full
fine-tuning, a trainable projection). It owns its parameters, says how fast they learn,
can be switched off without unloading, and saves itself as one adapter directory. The
`TunerSet` (tuner_set.py) holds a run's tuners; nothing else in the engine needs to know
which methods are on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from softprompt.registry import Registry


@dataclass
class PromptInput:
    """Soft prompts for one batch: a table of prompts and which one each row uses.

    Rows of a batch may use different prompts of different lengths: shorter prompts are
    padded at their end and `mask` marks their real positions. The splice moves that
    padding out of the row's way (behind it when scoring, in front when generating), so a
    row's result does not depend on the prompts beside it. One prompt for every row is the
    common case (`single`); backbones then compute the prompt once per batch.

    Attributes:
        table: (K, P, D) the prompts, padded to the longest (P).
        ids: (B,) long, the prompt of each row (index into `table`).
        mask: (K, P) 1 at real prompt positions, 0 at padding.
    """

    table: torch.Tensor
    ids: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def single(cls, weight: torch.Tensor, batch_size: int) -> PromptInput:
        """One (P, D) prompt for all `batch_size` rows."""
        table = weight.unsqueeze(0)
        ids = torch.zeros(batch_size, dtype=torch.long, device=weight.device)
        mask = torch.ones(1, weight.shape[0], dtype=torch.long, device=weight.device)
        return cls(table, ids, mask)

    @classmethod
    def from_rows(cls, rows: torch.Tensor) -> PromptInput:
        """A (B, P, D) tensor of per-row prompts (all positions real).

        A tensor expanded from one prompt (batch stride 0, or B == 1) is recognised as
        a single prompt, so it keeps the shared-prefix fast path.
        """
        b, p = rows.shape[0], rows.shape[1]
        if b == 1 or rows.stride(0) == 0:
            return cls.single(rows[0], b)
        ids = torch.arange(b, device=rows.device)
        return cls(rows, ids, torch.ones(b, p, dtype=torch.long, device=rows.device))

    @property
    def batch_size(self) -> int:
        return int(self.ids.shape[0])

    @property
    def length(self) -> int:
        return int(self.table.shape[1])

    @property
    def width(self) -> int:
        return int(self.table.shape[2])

    @property
    def is_single(self) -> bool:
        """One fully real prompt for every row: the same positions in every row."""
        return self.table.shape[0] == 1 and bool(self.mask.all())

    def rows(self) -> torch.Tensor:
        """(B, P, D) the prompt of every row (a stride-0 view for a single prompt)."""
        if self.table.shape[0] == 1:
            return self.table.expand(self.batch_size, -1, -1)
        return self.table[self.ids]

    def row_mask(self) -> torch.Tensor:
        """(B, P) 1 at each row's real prompt positions."""
        return self.mask[self.ids]


@runtime_checkable
class Tuner(Protocol):
    """One adaptation method attached to a loaded backbone.

    Attributes:
        name: the registry / YAML name ("prompt_tuning", "lora", "full", ...).
        adapter: the name of its directory in an adapter bundle ("prompt", "lora", ...).
        learning_rate: its optimizer group's learning rate.
        trainable: whether it trains in this run (a loaded LoRA can stay frozen).
        enabled: whether it acts on the model's outputs now (a hot switch).
    """

    name: str
    adapter: str
    learning_rate: float
    trainable: bool
    enabled: bool

    def modules(self) -> dict[str, nn.Module]:
        """Modules holding this tuner's parameters (wrapped together for DDP)."""
        ...

    def set_enabled(self, enabled: bool) -> None:
        """Switch the tuner on or off without reloading anything."""
        ...

    def save(self, directory: Path, context: dict[str, Any]) -> None:
        """Write this tuner's adapter directory (PEFT's format where PEFT has the method)."""
        ...

    def load(self, directory: Path) -> None:
        """Load weights saved by `save` (or by PEFT) into this tuner."""
        ...


# name -> factory(config: RunConfig, backbone) -> Tuner | None (None: not enabled)
TUNERS: Registry[Any] = Registry("tuner")
# adapter method in a bundle -> loader(backbone, bundle, adapter) -> a frozen Tuner
SAVED_TUNERS: Registry[Any] = Registry("saved adapter method")


def trainable_parameters(tuner: Tuner) -> list[nn.Parameter]:
    """The parameters of a tuner that receive gradients, without duplicates."""
    seen: dict[int, nn.Parameter] = {}
    for module in tuner.modules().values():
        for param in module.parameters():
            if param.requires_grad:
                seen.setdefault(id(param), param)
    return list(seen.values())
