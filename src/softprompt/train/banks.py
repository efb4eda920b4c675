"""Runs that train several prompts at once: a multi-task bank or a prompt ensemble.

Multi-task: every task's data is read with its own config (data, task, template), the
training set mixes them (`task_sampling`), each training row carries its task's prompt
id, and evaluation scores each task with its own prompt and task, reporting
`eval_<task>_<metric>` and the mean over tasks as `eval_<metric>`.

Ensemble: the training set is the task's own; every batch is run once per member (the
data is read and collated once), and evaluation reports each member
(`eval_member<k>_<metric>`) and the ensemble (`eval_<metric>`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from softprompt.config.multitask import TaskSpec, task_specs
from softprompt.config.run import ConfigError, RunConfig
from softprompt.data.mixing import mix_indices
from softprompt.data.splits import load_split, load_split_with_info
from softprompt.inference.plan import InferencePlan, Route
from softprompt.tasks.kinds import Task, task_from_config
from softprompt.train.run_files import prompt_task_record

logger = logging.getLogger("softprompt")


@dataclass
class TaskView:
    """One task of a multi-task run, as the loop uses it."""

    spec: TaskSpec
    task: Task

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def index(self) -> int:
        return self.spec.index


@dataclass
class MultiTaskData:
    """The mixed training set and each task's validation examples."""

    views: list[TaskView]
    train_examples: list
    prompt_ids: list[int]
    lengths: list[int]
    val_examples: list[tuple[int, Any]]  # (task index, raw example)
    skipped: Any = None


def load_multitask_data(config: RunConfig, backbone) -> MultiTaskData:
    """Every task's data, prepared by its own task, mixed for training.

    Raises:
        ConfigError: a task without training examples (named).
    """
    views, parts, vals, skipped = [], [], [], None
    for spec in task_specs(config):
        raw, info = load_split_with_info(spec.config, "train")
        if not raw:
            raise ConfigError(f"tasks: {spec.name!r} has no training examples")
        task = task_from_config(spec.config, info.get("classes"))
        views.append(TaskView(spec, task))
        parts.append(task.prepare(raw))
        vals.extend((spec.index, e) for e in load_split(spec.config, "val"))
        skipped = skipped or info.get("skipped")
    sizes = [len(p) for p in parts]
    flat = [(view.index, e) for view, part in zip(views, parts, strict=True) for e in part]
    flat_lengths = [
        n
        for view, part in zip(views, parts, strict=True)
        for n in view.task.lengths(part, backbone.tokenizer)
    ]
    s = config.task_sampling
    order = mix_indices(sizes, s.strategy, s.temperature, config.training.seed)
    examples = [flat[i][1] for i in order]
    logger.info(
        "Tasks: %s; %d mixed training examples per epoch (%s)",
        ", ".join(f"{v.name} ({n} train)" for v, n in zip(views, sizes, strict=True)),
        len(examples),
        s.strategy if s.strategy == "proportional" else f"temperature {s.temperature:g}",
    )
    return MultiTaskData(
        views,
        examples,
        [flat[i][0] for i in order],
        [flat_lengths[i] for i in order],
        vals,
        skipped,
    )


def bank_records(views: list[TaskView], backbone) -> dict[str, dict[str, Any]]:
    """What each task's prompt records about its task (template, classes, ...)."""
    return {v.name: prompt_task_record(v.spec.config, backbone, v.task) for v in views}


def test_examples(views: list[TaskView]) -> list[tuple[int, Any]]:
    """Every task's test split, tagged with its task index."""
    out = []
    for view in views:
        config = view.spec.config
        d = config.data
        if d.test_path or (d.train_path and d.train_path.startswith("builtin:")):
            out.extend((view.index, e) for e in load_split(config, "test"))
    return out


def training_plan(run) -> InferencePlan:
    """The run's inference plan: one route per task of a multi-task run (its prompt id in
    the bank), an ensemble's members, or the one task."""
    if run.task_views is not None:
        routes = [
            Route(view.name, view.task, run.settings, prompt_id=view.index)
            for view in run.task_views
        ]
        return InferencePlan.tasks(routes)
    prompt = run.tuners.prompt
    members = tuple(enumerate(prompt.names)) if run.replicas > 1 else ()
    return InferencePlan.single(run.task, run.settings, members=members)
