"""Deterministic, resumable batch order with length bucketing."""

from __future__ import annotations

import torch

from softprompt.data.records import TextExample

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


def split_step(step: list[int], parts: int) -> list[list[int]]:
    """Cut one optimizer step's examples into `parts` contiguous chunks of near-equal size.

    A full step of `parts * b` examples gives chunks of exactly `b`; a short last step
    gives chunks that differ by at most one example (some may be empty). Chunks are
    contiguous because a length-bucketed step is sorted by length: neighbours pad alike.
    """
    n = len(step)
    return [step[i * n // parts : (i + 1) * n // parts] for i in range(parts)]


def position_in_epoch(batches: list[list[int]], samples_done: int) -> int:
    """Index of the first batch not yet seen once `samples_done` examples of the epoch were.

    When the batches are those the position was recorded with, this is exact; when the
    batch size changed it is the first batch that ends at or after that many examples.
    """
    seen = 0
    for index, batch in enumerate(batches):
        if seen >= samples_done:
            return index
        seen += len(batch)
    return len(batches)


def input_lengths(examples: list[TextExample], tokenizer) -> list[int]:
    """Approximate token lengths (input + target), used for length bucketing."""
    texts = [e.input + " " + (e.target or "") for e in examples]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [len(ids) for ids in encoded]
