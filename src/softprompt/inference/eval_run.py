"""`softprompt eval`: score adapters (or the bare model) on a config's val/test data."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from softprompt.artifacts.bundle import read_bundle
from softprompt.backbones.from_config import backbone_from_config, encode_settings
from softprompt.config.multitask import task_specs
from softprompt.config.run import ConfigError, RunConfig
from softprompt.data.splits import load_split, load_split_with_info
from softprompt.inference.execute import EvalOptions, evaluate_plan
from softprompt.inference.loaded import LoadedModel, default_device, plan_for, tuners_from_bundle
from softprompt.inference.plan import InferencePlan, Route
from softprompt.inference.predict_io import write_records
from softprompt.tasks.kinds import Task, VisionTask, task_from_config


def _classes(config: RunConfig) -> list[str] | None:
    """Class names for classify: from task.labels, else the training/validation folders."""
    if config.task.labels:
        return list(config.task.labels)
    for split in ("train", "val"):
        try:
            _, info = load_split_with_info(config, split)
        except ConfigError:
            continue
        if info.get("classes"):
            return info["classes"]
    return None


def _config_task(config: RunConfig) -> Task:
    """The config's task, with its classes for classify."""
    return task_from_config(config, _classes(config) if config.task.type == "classify" else None)


def load_for_evaluation(
    config: RunConfig,
    prompt_dir: str | None = None,
    model: str | None = None,
    adapters: dict[str, bool] | None = None,
) -> LoadedModel:
    """The config's backbone with a bundle's adapters (none: zero-shot), on the device.

    For image tasks, a bundle's own task record (classes, label words, template) takes
    precedence over the config, so adapters are scored the way they were trained.
    """
    if not prompt_dir:
        # A bare composed model's projection is freshly initialised; seeded with
        # training.seed (as training seeds it before building the model), zero-shot
        # scores are the same on every run of the command.
        from accelerate.utils import set_seed

        set_seed(config.training.seed)
    backbone = backbone_from_config(config, model)
    if not prompt_dir:
        # The same path as zero-shot `predict --model` and the demo UI's baseline column.
        loaded = LoadedModel.zero_shot(backbone, _config_task(config), encode_settings(config))
        loaded.set_adapters(adapters or {})
        return loaded
    bundle = read_bundle(prompt_dir)
    tuners = tuners_from_bundle(bundle, backbone)
    record = bundle.task.get("vision_task")
    task: Task
    if record and config.task.type != "text2text":
        task = VisionTask.from_record(record)
    else:
        task = _config_task(config)
    plan = plan_for(tuners, bundle.task)
    if not plan.multitask:
        route = replace(plan.route(), task=task, settings=encode_settings(config))
        plan = plan.with_route(route)
    loaded = LoadedModel(backbone, tuners, plan, default_device())
    loaded.set_adapters(adapters or {})
    return loaded


def run_evaluation(
    config: RunConfig,
    prompt_dir: str | None = None,
    model: str | None = None,
    splits: tuple[str, ...] = ("val", "test"),
    predict: bool = True,
    progress: bool = False,
    predictions_path: str | None = None,
    adapters: dict[str, bool] | None = None,
) -> dict[str, Any]:
    """Metrics per split; without `prompt_dir` the bare model is scored (zero-shot).

    Args:
        adapters: hot switches applied after loading, e.g. {"prompt": False}.
    """
    loaded = load_for_evaluation(config, prompt_dir, model, adapters)
    batch_size = config.training.eval_batch_size or config.training.batch_size
    results: dict[str, Any] = {"prompt": prompt_dir, "model": loaded.backbone.name_or_path}
    if loaded.tuners.states():
        results["adapters"] = loaded.tuners.states()
    for split in splits:
        if config.tasks:
            metrics, records = _evaluate_tasks(loaded, config, split, batch_size, predict, progress)
        else:
            examples = load_split(config, split)
            if not examples:
                continue
            metrics, records = loaded.evaluate(examples, batch_size, predict, progress=progress)
        if not records and not metrics:
            continue
        results[split] = metrics
        if predictions_path:
            write_records(records, Path(predictions_path).with_suffix(f".{split}.jsonl"))
    return results


def _evaluate_tasks(
    loaded: LoadedModel, config: RunConfig, split: str, batch_size, predict, progress
):
    """A multi-task config: each task's split with its own task (and, for a bank, its own
    prompt); `<task>_<metric>` plus the mean over tasks, as training reports them."""
    routes, examples, tasks = [], [], []
    for spec in task_specs(config):
        own = load_split(spec.config, split)
        if not own:
            continue
        classes = _classes(spec.config) if spec.config.task.type == "classify" else None
        task = task_from_config(spec.config, classes)
        if loaded.plan.multitask:  # the bank's prompt of this task
            route = replace(loaded.plan.route(spec.name), task=task)
        else:  # one prompt scored on every task
            route = Route(spec.name, task, loaded.settings, loaded.task_record)
        routes.append(route)
        examples += own
        tasks += [spec.name] * len(own)
    if not routes:
        return {}, []
    options = EvalOptions(batch_size, predict, progress=progress)
    plan = InferencePlan.tasks(routes)
    return evaluate_plan(loaded.backbone, loaded.tuners, plan, examples, options, tasks)
