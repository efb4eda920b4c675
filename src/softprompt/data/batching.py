"""Deterministic, resumable batch order with length bucketing."""

from __future__ import annotations

import torch

# Examples are sorted by length inside windows of this many batches: padding falls
# sharply while the batch order stays random (the same idea as transformers'
# LengthGroupedSampler).
MEGABATCH_FACTOR = 50


def epoch_batches(
    lengths: list[int],
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    group_by_length: bool = True,
) -> list[list[int]]:
    """The batches (lists of example indices) of one epoch.

    The order depends only on (seed, epoch), so a resumed run can skip to its position
    and see exactly the batches an uninterrupted run would.

    Args:
        lengths: token length of each example.
        batch_size: examples per batch (the last batch may be smaller).
        seed: run seed.
        epoch: epoch number (0-based).
        shuffle: random order; False keeps file order (evaluation).
        group_by_length: sort by length inside megabatches to cut padding.
    """
    n = len(lengths)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
    if group_by_length:
        window = batch_size * MEGABATCH_FACTOR
        grouped: list[int] = []
        for start in range(0, n, window):
            chunk = order[start : start + window]
            grouped.extend(sorted(chunk, key=lambda i: -lengths[i]))
        order = grouped
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if shuffle and group_by_length and len(batches) > 1:
        perm = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in perm]
    return batches
