"""Evaluation and prediction, one path for every task: loss over label tokens, then
scored options (classify, closed answers) or generated text, then the task's metrics."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from softprompt.backbones.base import EncodeSettings
from softprompt.backbones.prompt_input import PromptInput
from softprompt.backbones.vision_base import move_batch
from softprompt.data.batching import epoch_batches
from softprompt.tasks.kinds import Task
from softprompt.tasks.metrics import perplexity


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

# Returns the batch's prompts for a number of rows (None: no prompt).
PromptSource = Callable[[int], PromptInput | None]


def no_prompt(batch_size: int) -> None:
    """The bare model (zero-shot)."""
    return None


def fixed_prompt(weight: torch.Tensor | None) -> PromptSource:
    """A source giving one (P, D) prompt (or none) to every row."""
    if weight is None:
        return no_prompt
    return lambda batch_size: PromptInput.single(weight, batch_size)


def score_options(
    backbone, prompts: PromptSource, chunk: list, task: Task, settings: EncodeSettings
) -> torch.Tensor:
    """(B, K) summed log-probabilities of each candidate output (label words, answers).

    Each example is repeated once per option with that option as its target; image
    features come from the cache, so only the language model runs K times.
    """
    rows = [replace(e, target=t) for e in chunk for t in task.option_targets(e.text)]
    k = len(rows) // len(chunk)
    device = next(backbone.model.parameters()).device
    batch = move_batch(backbone.collate(rows, settings, with_targets=True), device)
    scores = backbone.sequence_logprobs(batch, prompts(len(rows)))
    return scores.float().view(len(chunk), k).cpu()


def _option_record(task: Task, probs: torch.Tensor) -> dict[str, Any]:
    names = task.classes if task.type == "classify" else task.options() or []
    best = int(probs.argmax())
    return {
        "prediction": names[best],
        "probabilities": {n: round(float(p), 6) for n, p in zip(names, probs, strict=True)},
    }


def _outputs(backbone, prompts, chunk, task, settings, device) -> list[dict[str, Any]]:
    """Scored options or generated text for one batch of prepared examples."""
    if task.options():
        probs = torch.softmax(score_options(backbone, prompts, chunk, task, settings), -1)
        return [_option_record(task, row) for row in probs]
    batch = move_batch(backbone.collate(chunk, settings, with_targets=False), device)
    texts = backbone.generate(batch, prompts(len(chunk)), task.max_new_tokens)
    return [{"prediction": t} for t in texts]


@torch.no_grad()
def evaluate(
    backbone,
    prompts: PromptSource,
    examples: list,
    task: Task,
    settings: EncodeSettings,
    *,
    batch_size: int,
    predict: bool = True,
    with_loss: bool = True,
    progress: bool = False,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    shard: EvalShard = WHOLE_SET,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score a model (its prompts from `prompts`; `no_prompt` for zero-shot) on examples.

    `loss` is total cross-entropy / total label tokens over the whole set (a per-token
    mean, the definition transformers uses within a batch, extended to the set). Tasks
    with options (classify, closed answers) are always scored, since that is cheap.
    With a `shard`, this process scores its part and metrics and records cover every part.

    Returns:
        (metrics, records). Metrics: `loss`, `perplexity`, `num_samples` and, when
        predicting, the task's metrics. Records: one per example in input order (empty
        when not predicting).
    """
    backbone.bind_task(task)
    model = backbone.model
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    predict = predict or task.options() is not None
    prepared = task.prepare(examples)
    positions = shard.positions(len(examples))
    lengths = task.lengths([prepared[i] for i in positions], backbone.tokenizer)
    # Sorted by length (no shuffle) so batches carry little padding.
    batches = epoch_batches(lengths, batch_size, seed=0, epoch=0, shuffle=False)
    total_loss, total_tokens = 0.0, 0
    scored: dict[int, dict[str, Any]] = {}
    for local_indices in tqdm(batches, desc="eval", disable=not progress, leave=False):
        indices = [positions[i] for i in local_indices]
        chunk = [prepared[i] for i in indices]
        with autocast():
            labelled = [e for e in chunk if e.target is not None]
            if with_loss and labelled:
                batch = move_batch(backbone.collate(labelled, settings, with_targets=True), device)
                loss, count = backbone.loss_sum(batch, prompts(len(labelled)))
                total_loss += float(loss)
                total_tokens += int(count)
            if predict:
                outputs = _outputs(backbone, prompts, chunk, task, settings, device)
                for i, output in zip(indices, outputs, strict=True):
                    scored[i] = task.record(examples[i], output)
    model.train(was_training)
    total_loss, total_tokens, scored = shard.join(total_loss, total_tokens, scored)
    mean_loss = total_loss / total_tokens if total_tokens else math.nan
    metrics: dict[str, Any] = {
        "loss": mean_loss,
        "perplexity": perplexity(mean_loss),
        "num_samples": len(examples),
    }
    order = sorted(scored)
    records = [scored[i] for i in order]
    if predict and records:
        metrics.update(task.metrics([examples[i] for i in order], records))
    return metrics, records


def mean_over(parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-part metrics flattened (`<part>_<metric>`) plus the mean of each numeric
    metric every part has (`num_samples`: the sum)."""
    out: dict[str, Any] = {}
    for name, metrics in parts.items():
        out.update({f"{name}_{k}": v for k, v in metrics.items()})
    common = set.intersection(*(set(m) for m in parts.values())) if parts else set()
    for key in sorted(common):
        values = [m[key] for m in parts.values()]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            continue
        if key == "num_samples":
            out[key] = sum(values)
        else:
            finite = [v for v in values if not math.isnan(v)]
            out[key] = sum(finite) / len(finite) if finite else math.nan
    return out
