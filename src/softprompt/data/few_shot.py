"""CoOp's few-shot protocol on labelled image examples: base / new class halves, K shots.

- `data.subsample_classes`: `base` keeps the first half of the sorted classes (rounded
  up), `new` the rest, `all` every class: CoOp's base-to-novel split, so a prompt
  trained on `base` is scored on classes it never saw.
- `data.num_shots`: K examples per class drawn with the run's seed for training, and
  min(K, 4) per class for validation, as CoOp's data loaders do; the test split is kept
  whole.
"""

from __future__ import annotations

import math
import random

from softprompt.data.records import VisionExample

SUBSETS = ("all", "base", "new")
VALIDATION_SHOTS = 4


def class_subset(classes: list[str], subset: str) -> list[str]:
    """The classes of `subset` ("all", "base" or "new") among `classes`, sorted."""
    if subset not in SUBSETS:
        raise ValueError(f"subsample_classes must be one of {SUBSETS}; got {subset!r}")
    ordered = sorted(classes)
    half = math.ceil(len(ordered) / 2)
    return {"all": ordered, "base": ordered[:half], "new": ordered[half:]}[subset]


def shots_for(split: str, num_shots: int | None) -> int | None:
    """Examples per class a split keeps: K for training, min(K, 4) for validation."""
    if num_shots is None or split == "test":
        return None
    return num_shots if split == "train" else min(num_shots, VALIDATION_SHOTS)


def few_shot(examples: list[VisionExample], shots: int, seed: int) -> list[VisionExample]:
    """`shots` examples of every class, drawn with `seed` (all of a class that has fewer),
    in the examples' own order."""
    by_class: dict[str | None, list[int]] = {}
    for index, example in enumerate(examples):
        by_class.setdefault(example.label, []).append(index)
    rng = random.Random(seed)
    keep: set[int] = set()
    for label in sorted(by_class, key=str):
        members = by_class[label]
        keep.update(members if len(members) <= shots else rng.sample(members, shots))
    return [e for i, e in enumerate(examples) if i in keep]
