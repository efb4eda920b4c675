"""Evaluation and prediction for image tasks: loss, then scoring or generation."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from tqdm.auto import tqdm

from softprompt.backbones.base import EncodeSettings
from softprompt.backbones.vision_base import VisionLanguageBackbone, move_batch
from softprompt.data.batching import epoch_batches
from softprompt.data.records import VisionExample
from softprompt.evaluate import WHOLE_SET, EvalShard, expand_prompt
from softprompt.metrics import (
    bleu,
    cider,
    classification_metrics,
    exact_match,
    perplexity,
    rouge,
    vqa_accuracy,
)
from softprompt.tasks import VisionTask

MIN_VQA_ANNOTATORS = 3


def _lengths(examples: list[VisionExample]) -> list[int]:
    # Character length is a good enough proxy for ordering batches by text length.
    return [len(e.text) + len(e.target or "") for e in examples]


def score_options(
    backbone: VisionLanguageBackbone,
    prompt: torch.Tensor | None,
    chunk: list[VisionExample],
    task: VisionTask,
    settings: EncodeSettings,
) -> torch.Tensor:
    """(B, K) summed log-probabilities of each candidate output (label words, answers).

    Each example is repeated once per option with that option as its target; the image
    features come from the cache, so only the language model runs K times.
    """
    rows = [replace(e, target=t) for e in chunk for t in task.option_targets(e.text)]
    k = len(rows) // len(chunk)
    device = next(backbone.model.parameters()).device
    batch = move_batch(backbone.collate(rows, settings, with_targets=True), device)
    scores = backbone.sequence_logprobs(batch, expand_prompt(prompt, len(rows)))
    return scores.float().view(len(chunk), k).cpu()


@torch.no_grad()
def evaluate_vision(
    backbone: VisionLanguageBackbone,
    prompt: torch.Tensor | None,
    examples: list[VisionExample],
    task: VisionTask,
    settings: EncodeSettings,
    *,
    batch_size: int,
    predict: bool = True,
    with_loss: bool = True,
    progress: bool = False,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    shard: EvalShard = WHOLE_SET,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score a prompt (or none: zero-shot) on image examples.

    With a `shard`, this process scores its part and metrics and records cover every part.

    Returns:
        (metrics, records). Metrics: `loss`, `perplexity` and, with `predict`, the task's
        metrics (classify: accuracy, precision/recall/F1, ROC-AUC, AP, confusion matrix;
        caption: BLEU, ROUGE, CIDEr; vqa: VQA accuracy, exact match). Records: one per
        example in input order with id, image, prediction (+ probabilities).
    """
    model = backbone.model
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    prepared = task.prepare(examples)
    positions = shard.positions(len(examples))
    lengths = _lengths([prepared[i] for i in positions])
    batches = epoch_batches(lengths, batch_size, seed=0, epoch=0, shuffle=False)
    options = task.options()
    total_loss, total_tokens = 0.0, 0
    scored: dict[int, dict[str, Any]] = {}
    for local_indices in tqdm(batches, desc="eval", disable=not progress, leave=False):
        indices = [positions[i] for i in local_indices]
        chunk = [prepared[i] for i in indices]
        with autocast():
            labelled = [e for e in chunk if e.target is not None]
            if with_loss and labelled:
                batch = move_batch(backbone.collate(labelled, settings, with_targets=True), device)
                loss, count = backbone.loss_sum(batch, expand_prompt(prompt, len(labelled)))
                total_loss += float(loss)
                total_tokens += int(count)
            if not predict:
                continue
            if options:
                probs = torch.softmax(score_options(backbone, prompt, chunk, task, settings), -1)
                outputs = [_option_record(task, row) for row in probs]
            else:
                batch = move_batch(backbone.collate(chunk, settings, with_targets=False), device)
                texts = backbone.generate(
                    batch, expand_prompt(prompt, len(chunk)), task.max_new_tokens
                )
                outputs = [{"prediction": t} for t in texts]
        for i, output in zip(indices, outputs, strict=True) if predict else ():
            raw = examples[i]
            record = {"id": raw.id, "image": raw.image_path}
            if task.type == "vqa":
                record["question"] = raw.text
            record.update(output)
            record.update(_gold(task, raw))
            scored[i] = record
    model.train(was_training)
    total_loss, total_tokens, scored = shard.join(total_loss, total_tokens, scored)
    mean_loss = total_loss / total_tokens if total_tokens else math.nan
    metrics: dict[str, Any] = {
        "loss": mean_loss,
        "perplexity": perplexity(mean_loss),
        "num_samples": len(examples),
    }
    done = [scored[i] for i in sorted(scored)]
    if predict and done:
        metrics.update(task_metrics(task, examples, done))
    return metrics, done


def _gold(task: VisionTask, example: VisionExample) -> dict[str, Any]:
    """The reference next to the prediction, so a predictions file can be read alone."""
    if task.type == "classify":
        return {"label": example.label} if example.label else {}
    refs = example.references or ([example.target] if example.target else [])
    return {"references": refs} if refs else {}


def _option_record(task: VisionTask, probs: torch.Tensor) -> dict[str, Any]:
    names = task.classes if task.type == "classify" else task.options() or []
    best = int(probs.argmax())
    return {
        "prediction": names[best],
        "probabilities": {n: round(float(p), 6) for n, p in zip(names, probs, strict=True)},
    }


def task_metrics(
    task: VisionTask, examples: list[VisionExample], records: list[dict[str, Any]]
) -> dict[str, Any]:
    """The task's metrics over labelled examples (unlabelled ones are ignored)."""
    preds = [r["prediction"] for r in records]
    if task.type == "classify":
        pairs = [(e.label, r) for e, r in zip(examples, records, strict=True) if e.label]
        if not pairs:
            return {}
        probabilities = [[r["probabilities"][c] for c in task.classes] for _, r in pairs]
        return classification_metrics(
            [label for label, _ in pairs],
            [r["prediction"] for _, r in pairs],
            labels=task.classes,
            probabilities=probabilities,
            positive_label=task.positive_label,
        )
    refs = [e.references or ([e.target] if e.target else []) for e in examples]
    keep = [i for i, r in enumerate(refs) if r]
    if not keep:
        return {}
    preds = [preds[i] for i in keep]
    refs = [refs[i] for i in keep]
    if task.type == "caption":
        return {"bleu": bleu(preds, refs), **rouge(preds, refs), "cider": cider(preds, refs)}
    metrics = {"exact_match": exact_match(preds, refs)}
    # The VQA formula credits min(#annotators who gave the answer / 3, 1): with a single
    # reference answer (easy-VQA, most custom sets) a right answer scores 1/3, which
    # reads as a wrong model. It is reported only where references are annotator sets.
    if all(len(r) >= MIN_VQA_ANNOTATORS for r in refs):
        metrics["vqa_accuracy"] = vqa_accuracy(preds, refs)
    return metrics
