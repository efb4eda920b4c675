"""`PromptInput`: the soft prompts of one batch, the one form every backbone takes them in."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
