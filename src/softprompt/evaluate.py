"""Evaluation: loss over label tokens plus generation metrics for the task."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from softprompt.backbones.base import Backbone, EncodeSettings, input_lengths
from softprompt.data.batching import epoch_batches
from softprompt.data.records import TextExample
from softprompt.metrics import perplexity, text_generation_metrics


def expand_prompt(prompt: torch.Tensor | None, batch_size: int) -> torch.Tensor | None:
    """(P, D) -> (B, P, D) without copying."""
    if prompt is None:
        return None
    return prompt.unsqueeze(0).expand(batch_size, -1, -1)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate(
    backbone: Backbone,
    prompt: torch.Tensor | None,
    examples: list[TextExample],
    settings: EncodeSettings,
    *,
    batch_size: int,
    max_new_tokens: int,
    generate: bool = True,
    progress: bool = False,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[dict[str, float], list[str]]:
    """Score a prompt (or the bare model when `prompt` is None) on labelled examples.

    `loss` is total cross-entropy / total label tokens over the whole set (a per-token
    mean, the definition transformers uses within a batch, extended to the set).

    Returns:
        (metrics, predictions): metrics without prefix (loss, perplexity, and with
        `generate` bleu, rouge1, rouge2, rougeL, exact_match); predictions in input order
        (empty without `generate`).
    """
    model = backbone.model
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    lengths = input_lengths(examples, backbone.tokenizer)
    # Sorted by length (no shuffle) so batches carry little padding.
    batches = epoch_batches(lengths, batch_size, seed=0, epoch=0, shuffle=False)
    total_loss, total_tokens = 0.0, 0
    predictions: list[str | None] = [None] * len(examples)
    bar = tqdm(total=len(batches), desc="eval", disable=not progress, leave=False)
    for indices in batches:
        chunk = [examples[i] for i in indices]
        p = expand_prompt(prompt, len(chunk))
        with autocast():
            labelled = [e for e in chunk if e.target is not None]
            if labelled:
                batch = _to(backbone.collate(labelled, settings, with_targets=True), device)
                loss, count = backbone.loss_sum(batch, expand_prompt(prompt, len(labelled)))
                total_loss += float(loss)
                total_tokens += int(count)
            if generate:
                batch = _to(backbone.collate(chunk, settings, with_targets=False), device)
                for i, text in zip(
                    indices, backbone.generate(batch, p, max_new_tokens), strict=True
                ):
                    predictions[i] = text
        bar.update(1)
    bar.close()
    model.train(was_training)
    mean_loss = total_loss / total_tokens if total_tokens else math.nan
    metrics: dict[str, float] = {
        "loss": mean_loss,
        "perplexity": perplexity(mean_loss),
        "num_samples": len(examples),
    }
    preds = [p or "" for p in predictions] if generate else []
    if generate:
        refs = [e.references or [e.target or ""] for e in examples]
        metrics.update(text_generation_metrics(preds, refs))
    return metrics, preds
