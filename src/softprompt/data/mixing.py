"""Task mixing: the order in which a multi-task run's examples make up one epoch."""

from __future__ import annotations

import math
import random


def mix_indices(sizes: list[int], strategy: str, temperature: float, seed: int) -> list[int]:
    """Indices into the concatenated tasks that make up one epoch of mixed training.

    proportional: every example once. temperature: task i gets round(N * p_i) examples
    with p_i proportional to n_i^(1/T) (N the total size), drawn without repetition from
    a seeded shuffle of the task and cycled when the share exceeds its size.
    """
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    if strategy == "proportional":
        return list(range(sum(sizes)))
    weights = [n ** (1.0 / temperature) if n else 0.0 for n in sizes]
    total, norm = sum(sizes), sum(weights)
    rng = random.Random(seed)
    out: list[int] = []
    for size, offset, weight in zip(sizes, offsets, weights, strict=True):
        if not size:
            continue
        share = max(1, math.floor(total * weight / norm + 0.5))
        order = list(range(size))
        rng.shuffle(order)
        out.extend(offset + order[i % size] for i in range(share))
    return out
