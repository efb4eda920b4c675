"""Running an inference plan: evaluation over a plan's routes, and mixed-batch answering.

`evaluate_plan` is the one evaluator for every prompt kind (one prompt, a multi-task bank,
an ensemble); training, `eval` and `LoadedModel.evaluate` all call it.

`answer` takes a list of requests, each naming its task (prompt) and bringing its own input
and generation length, and answers them in mixed batches: rows of different prompts and
tasks share one forward pass (scored options in one pass, generation in another). Each
row's result equals answering it alone, because the splice keeps a row's positions
independent of the prompts beside it (`softprompt.backbones.splice`). Nothing shared is
changed, so several threads may answer at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from softprompt.backbones.decoding import GREEDY, Decoding
from softprompt.backbones.vision_base import move_batch
from softprompt.data.records import TextExample, VisionExample
from softprompt.inference.ensemble import evaluate_ensemble
from softprompt.inference.evaluate import (
    WHOLE_SET,
    EvalShard,
    _option_record,
    evaluate,
    mean_over,
)
from softprompt.inference.plan import InferencePlan, Route, route_prompts, rows_prompts


@dataclass(frozen=True)
class Request:
    """One input to answer.

    Attributes:
        example: the input as the task's reader gives it (text with its template
            applied; an image with its question).
        task: the task (prompt) of a multi-task bank; None: the plan's default.
        max_new_tokens: generation length (None: the task's).
    """

    example: TextExample | VisionExample
    task: str | None = None
    max_new_tokens: int | None = None


@dataclass(frozen=True)
class EvalOptions:
    """How `evaluate_plan` runs (see `softprompt.inference.evaluate.evaluate`)."""

    batch_size: int = 8
    predict: bool = True
    with_loss: bool = True
    progress: bool = False
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    shard: EvalShard = WHOLE_SET

    def kwargs(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "predict": self.predict,
            "progress": self.progress,
            "autocast": self.autocast,
            "shard": self.shard,
        }


def evaluate_plan(
    backbone,
    tuners,
    plan: InferencePlan,
    examples: list,
    options: EvalOptions,
    tasks: list[str] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics and records of the plan's prompts on `examples`.

    Args:
        examples: raw examples (with labels for metrics).
        tasks: each example's task name, for a multi-task plan (None: the default route).

    Returns:
        (metrics, records). One task: the task's metrics. A multi-task plan:
        `<task>_<metric>` per task plus the mean over tasks, records tagged with `task`.
        An ensemble: the ensemble's metrics plus `<member>_<metric>` per member.
    """
    if plan.multitask:
        return _evaluate_tasks(backbone, tuners, plan, examples, tasks, options)
    route = plan.route(None)
    if plan.members:
        return _evaluate_members(backbone, tuners, plan, route, examples, options)
    return _evaluate_route(backbone, tuners, route, examples, options)


def _evaluate_route(backbone, tuners, route: Route, examples: list, options: EvalOptions):
    """One task with its own prompt: `evaluate` with the route's prompt source."""
    prompts = route_prompts(tuners, route.prompt_id)
    return evaluate(
        backbone,
        prompts,
        examples,
        route.task,
        route.settings,
        with_loss=options.with_loss,
        **options.kwargs(),
    )


def _evaluate_tasks(backbone, tuners, plan, examples, tasks, options):
    if tasks is None or len(tasks) != len(examples):
        raise ValueError("a multi-task plan needs each example's task name")
    parts, records = {}, []
    for name, route in plan.routes.items():
        own = [e for e, t in zip(examples, tasks, strict=True) if t == name]
        if not own:
            continue
        metrics, scored = _evaluate_route(backbone, tuners, route, own, options)
        parts[name] = metrics
        records.extend({"task": name, **r} for r in scored)
    return (mean_over(parts) if parts else {}), records


def _evaluate_members(backbone, tuners, plan, route: Route, examples, options):
    sources = [route_prompts(tuners, prompt_id) for prompt_id, _ in plan.members]
    metrics, records, members = evaluate_ensemble(
        backbone, sources, examples, route.task, route.settings, **options.kwargs()
    )
    for (_, name), member in zip(plan.members, members, strict=True):
        metrics.update({f"{name}_{k}": v for k, v in member.items()})
    return metrics, records


@dataclass(frozen=True)
class Row:
    """One request on its way: where it goes in the output and its prepared input
    (the task's `prepare`d example: a template applied, a question formatted)."""

    index: int
    route: Route
    raw: Any
    prepared: Any
    max_new_tokens: int


@torch.no_grad()
def answer(
    backbone,
    tuners,
    plan: InferencePlan,
    requests: list[Request],
    batch_size: int = 8,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One record per request, in request order, answered in mixed batches.

    Requests for scored tasks (classify, closed answers) are batched together whatever
    their prompt; generation requests are batched by generation length (a row's greedy
    tokens do not depend on its neighbours, only on its own budget).

    Raises:
        ConfigError: a request names a task the plan does not have.
    """
    rows = [
        prepare_row(i, plan.route(r.task), r.example, r.max_new_tokens)
        for i, r in enumerate(requests)
    ]
    if plan.members:
        return _answer_ensemble(backbone, tuners, plan, rows, batch_size)
    batches = [
        (key, chunk)
        for key, group in _groups(rows).items()
        for chunk in _chunks(group, batch_size, backbone.tokenizer)
    ]
    out: dict[int, dict[str, Any]] = {}
    for key, chunk in tqdm(batches, desc="predict", disable=not progress, leave=False):
        outputs = score_rows(backbone, tuners, chunk) if key[0] else generate_rows(
            backbone, tuners, chunk, key[1]
        )  # fmt: skip
        for row, output in zip(chunk, outputs, strict=True):
            out[row.index] = row.route.task.record(row.raw, output)
    return [_tagged(requests[i], out[i]) for i in range(len(requests))]


def prepare_row(index: int, route: Route, example: Any, max_new_tokens: int | None = None) -> Row:
    """A request's input prepared for `route`'s task (labels dropped), with its budget."""
    # Labels play no part in an answer (and are not echoed in its record, as `predict`
    # never did); a label outside the task's classes must not fail it.
    unlabelled = replace(example, target=None)
    if isinstance(unlabelled, VisionExample):
        unlabelled = replace(unlabelled, label=None)
    prepared = route.task.prepare([unlabelled])[0]
    budget = max_new_tokens or route.task.max_new_tokens
    return Row(index, route, unlabelled, prepared, budget)


def _tagged(request: Request, record: dict[str, Any]) -> dict[str, Any]:
    return {"task": request.task, **record} if request.task else record


def _groups(rows: list[Row]) -> dict[tuple, list[Row]]:
    """Rows that can share a batch: scored or generated, generation length, lengths."""
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        scored = row.route.task.options() is not None
        s = row.route.settings
        key = (scored, 0 if scored else row.max_new_tokens, s.max_input_length, s.max_target_length)
        groups.setdefault(key, []).append(row)
    return groups


def _chunks(rows: list[Row], batch_size: int, tokenizer) -> list[list[Row]]:
    """Batches of rows sorted by length, so batches carry little padding."""
    lengths: dict[int, int] = {}
    by_route: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_route.setdefault(row.route.name, []).append(i)
    for members in by_route.values():  # one tokenizer call per task, not per row
        task = rows[members[0]].route.task
        found = task.lengths([rows[i].prepared for i in members], tokenizer)
        lengths.update(zip(members, found, strict=True))
    order = sorted(range(len(rows)), key=lambda i: lengths[i])
    ordered = [rows[i] for i in order]
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), max(1, batch_size))]


def _device(backbone) -> torch.device:
    return next(backbone.model.parameters()).device


def score_rows(backbone, tuners, chunk: list[Row]) -> list[dict[str, Any]]:
    """Each row's options scored in one pass over every row's options (any prompts)."""
    options, prompt_ids, counts = [], [], []
    for row in chunk:
        targets = row.route.task.option_targets(row.prepared.text)
        options += [replace(row.prepared, target=t) for t in targets]
        prompt_ids += [row.route.prompt_id] * len(targets)
        counts.append(len(targets))
    settings = chunk[0].route.settings
    backbone.bind_task(chunk[0].route.task)
    batch = backbone.collate(options, settings, with_targets=True)
    batch = move_batch(batch, _device(backbone))
    scores = backbone.sequence_logprobs(batch, rows_prompts(tuners, prompt_ids)).float().cpu()
    outputs = []
    for row, own in zip(chunk, torch.split(scores, counts), strict=True):
        outputs.append(_option_record(row.route.task, torch.softmax(own, -1)))
    return outputs


def generate_rows(
    backbone, tuners, chunk: list[Row], max_new_tokens: int, decoding: Decoding = GREEDY
) -> list[dict[str, Any]]:
    """The text of every row in one generation pass (any prompts), greedy by default."""
    settings = chunk[0].route.settings
    batch = backbone.collate([r.prepared for r in chunk], settings, with_targets=False)
    batch = move_batch(batch, _device(backbone))
    prompts = rows_prompts(tuners, [r.route.prompt_id for r in chunk])
    texts = backbone.generate(batch, prompts, max_new_tokens, decoding=decoding)
    return [{"prediction": t} for t in texts]


def _answer_ensemble(backbone, tuners, plan, rows: list[Row], batch_size: int) -> list:
    """An ensemble's records: members combined (by generation length, in input order)."""
    out: dict[int, dict[str, Any]] = {}
    by_budget: dict[int, list[Row]] = {}
    for row in rows:
        by_budget.setdefault(row.max_new_tokens, []).append(row)
    for budget, group in by_budget.items():
        route = replace(group[0].route, task=replace(group[0].route.task, max_new_tokens=budget))
        one = replace(plan, routes={route.name: route}, default=route.name)
        options = EvalOptions(batch_size=batch_size, with_loss=False)
        _, records = evaluate_plan(backbone, tuners, one, [r.raw for r in group], options)
        out.update({row.index: rec for row, rec in zip(group, records, strict=True)})
    return [out[i] for i in range(len(rows))]
