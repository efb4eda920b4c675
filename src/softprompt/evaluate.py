"""Evaluation: loss over label tokens plus generation metrics for the task."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from softprompt.backbones.base import Backbone, EncodeSettings, input_lengths
from softprompt.data.batching import epoch_batches
from softprompt.data.records import TextExample
from softprompt.metrics import perplexity, text_generation_metrics


@dataclass(frozen=True)
class EvalShard:
    """The part of an evaluation set one process scores, and how the parts are joined.

    With several processes each scores every `count`-th example (strided, so every part
    holds short and long ones), then all parts are gathered so that every process
    computes the metrics over the whole set: the same numbers everywhere, which keeps
    decisions taken on them (best/, early stopping) identical across processes.

    Attributes:
        index: this process's part (0-based).
        count: the number of parts (processes).
        gather: collects one list from every process and concatenates them in process
            order (`accelerate.utils.gather_object`); unused with one part.
    """

    index: int = 0
    count: int = 1
    gather: Callable[[list[Any]], list[Any]] | None = None

    def positions(self, n: int) -> list[int]:
        """Indices (into a set of n examples) this process scores."""
        return list(range(self.index, n, self.count))

    def join(self, loss_sum: float, tokens: int, outputs: dict[int, Any]):
        """Sum the loss and token counts of all parts and merge their per-example outputs.

        Args:
            outputs: this part's outputs by index into the whole set.

        Returns:
            (loss_sum, tokens, outputs) over every part.
        """
        if self.count == 1:
            return loss_sum, tokens, outputs
        parts = self.gather([(loss_sum, tokens, outputs)])
        merged: dict[int, Any] = {}
        for _, _, part in parts:
            merged.update(part)
        return sum(p[0] for p in parts), sum(p[1] for p in parts), merged


WHOLE_SET = EvalShard()


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
    shard: EvalShard = WHOLE_SET,
) -> tuple[dict[str, float], list[str]]:
    """Score a prompt (or the bare model when `prompt` is None) on labelled examples.

    `loss` is total cross-entropy / total label tokens over the whole set (a per-token
    mean, the definition transformers uses within a batch, extended to the set).
    With a `shard`, this process scores its part and the metrics cover every part.

    Returns:
        (metrics, predictions): metrics without prefix (loss, perplexity, and with
        `generate` bleu, rouge1, rouge2, rougeL, exact_match); predictions in input order
        (empty without `generate`).
    """
    model = backbone.model
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    positions = shard.positions(len(examples))
    local = [examples[i] for i in positions]
    lengths = input_lengths(local, backbone.tokenizer) if local else []
    # Sorted by length (no shuffle) so batches carry little padding.
    batches = epoch_batches(lengths, batch_size, seed=0, epoch=0, shuffle=False)
    total_loss, total_tokens = 0.0, 0
    predicted: dict[int, str] = {}
    bar = tqdm(total=len(batches), desc="eval", disable=not progress, leave=False)
    for local_indices in batches:
        indices = [positions[i] for i in local_indices]
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
                    predicted[i] = text
        bar.update(1)
    bar.close()
    model.train(was_training)
    total_loss, total_tokens, predicted = shard.join(total_loss, total_tokens, predicted)
    mean_loss = total_loss / total_tokens if total_tokens else math.nan
    metrics: dict[str, float] = {
        "loss": mean_loss,
        "perplexity": perplexity(mean_loss),
        "num_samples": len(examples),
    }
    preds = [predicted.get(i) or "" for i in range(len(examples))] if generate else []
    if generate:
        refs = [e.references or [e.target or ""] for e in examples]
        metrics.update(text_generation_metrics(preds, refs))
    return metrics, preds
