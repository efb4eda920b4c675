"""Prompt ensembles: K prompts for one task, their predictions combined.

Scored tasks (classify, closed answers) average the members' label probabilities. For
generation every member proposes its greedy output; each distinct candidate is then
scored by every member (the sum of its token log-probabilities), and the candidate with
the highest mean over members wins. Every member is also reported on its own.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch

from softprompt.backbones.base import EncodeSettings
from softprompt.backbones.vision_base import move_batch
from softprompt.inference.evaluate import PromptSource, _option_record, evaluate
from softprompt.tasks.kinds import Task


def mean_probabilities(member_records: list[list[dict[str, Any]]]) -> list[torch.Tensor]:
    """Per example, the members' label probabilities averaged: (K options,) each."""
    out = []
    for rows in zip(*member_records, strict=True):
        probs = [torch.tensor(list(r["probabilities"].values())) for r in rows]
        out.append(torch.stack(probs).mean(0))
    return out


@torch.no_grad()
def candidate_scores(
    backbone,
    sources: list[PromptSource],
    example,
    candidates: list[str],
    settings: EncodeSettings,
) -> torch.Tensor:
    """(C,) mean over members of each candidate's summed log-probability."""
    rows = [replace(example, target=c) for c in candidates]
    device = next(backbone.model.parameters()).device
    batch = move_batch(backbone.collate(rows, settings, with_targets=True), device)
    scores = [backbone.sequence_logprobs(batch, source(len(rows))).float() for source in sources]
    return torch.stack(scores).mean(0).cpu()


def pick_candidates(
    backbone, sources, prepared: list, member_records, settings
) -> list[dict[str, Any]]:
    """The ensemble's generated output per example: the best-scored member candidate."""
    outputs = []
    for i, example in enumerate(prepared):
        proposed = [m[i].get("prediction") or "" for m in member_records]
        candidates = list(dict.fromkeys(proposed))  # distinct, in member order
        if len(candidates) == 1:
            outputs.append({"prediction": candidates[0], "candidates": {candidates[0]: None}})
            continue
        scores = candidate_scores(backbone, sources, example, candidates, settings)
        best = int(scores.argmax())
        outputs.append(
            {
                "prediction": candidates[best],
                "candidates": {
                    c: round(float(s), 4) for c, s in zip(candidates, scores, strict=True)
                },
            }
        )
    return outputs


def evaluate_ensemble(
    backbone,
    sources: list[PromptSource],
    examples: list,
    task: Task,
    settings: EncodeSettings,
    *,
    batch_size: int,
    predict: bool = True,
    **kwargs: Any,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Each member's metrics and the ensemble's.

    Returns:
        (ensemble metrics, ensemble records, member metrics in member order). The
        ensemble's `loss` is the members' mean loss.
    """
    runs = [
        evaluate(
            backbone, s, examples, task, settings, batch_size=batch_size, predict=predict, **kwargs
        )
        for s in sources
    ]
    member_metrics = [m for m, _ in runs]
    losses = [m["loss"] for m in member_metrics if not math.isnan(m["loss"])]
    metrics: dict[str, Any] = {
        "loss": sum(losses) / len(losses) if losses else math.nan,
        "num_samples": len(examples),
    }
    member_records = [r for _, r in runs]
    if not member_records[0]:
        return metrics, [], member_metrics
    if task.options():
        outputs = [_option_record(task, p) for p in mean_probabilities(member_records)]
    else:
        prepared = task.prepare(examples)
        outputs = pick_candidates(backbone, sources, prepared, member_records, settings)
    records = [task.record(raw, out) for raw, out in zip(examples, outputs, strict=True)]
    metrics.update(task.metrics(examples, records))
    return metrics, records, member_metrics
