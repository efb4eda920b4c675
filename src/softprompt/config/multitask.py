"""Multi-task runs: the `tasks:` list resolved into one config per task, and the mixed
training set whose rows each carry the index of their task's prompt."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from softprompt.config.errors import ConfigError, describe_error

if TYPE_CHECKING:  # the run config validates its `tasks:` through this module
    from softprompt.config.run import RunConfig


def is_vision(config: RunConfig) -> bool:
    """Image tasks (classify, caption, vqa) as opposed to text-to-text."""
    return config.task.type != "text2text"


# Keys that shape the one shared backbone or the batches of every task: a task may not
# set them differently from the rest of the config.
RUN_WIDE_DATA_KEYS = ("max_input_length", "max_target_length", "feature_cache", "cache_dir")


@dataclass
class TaskSpec:
    """One task of a multi-task run.

    Attributes:
        name: the task's (and its prompt's) name.
        index: its prompt's index in the bank (row prompt id).
        config: the whole config as this task sees it (its data, task and prompt).
        init_from: a trained prompt directory to start from, or None.
        prompt_length: the prompt length the entry itself sets (None: not set).
    """

    name: str
    index: int
    config: RunConfig
    init_from: str | None = None
    prompt_length: int | None = None


def resolve_tasks(config: RunConfig) -> list[TaskSpec]:
    """One config per `tasks:` entry: the entry's keys over the config's own.

    Raises:
        ValueError: duplicate names, a task that mixes image and text inputs with the
            others, a run-wide key set per task, or an entry whose merged config is
            invalid (the message names the task).
    """
    base = config.model_dump()
    base["tasks"] = []
    specs: list[TaskSpec] = []
    seen: set[str] = set()
    for index, entry in enumerate(config.tasks):
        where = f"tasks[{index}] ({entry.name})"
        if entry.name in seen:
            raise ValueError(f"{where}: the name {entry.name!r} is used twice")
        seen.add(entry.name)
        fixed = [k for k in RUN_WIDE_DATA_KEYS if k in entry.data]
        if fixed:
            raise ValueError(
                f"{where}: data.{fixed[0]} is run-wide (one backbone, mixed batches); set it "
                "in the config's own data section"
            )
        merged = _merged(base, entry)
        try:
            task_config = type(config).model_validate(merged)
        except ValueError as err:
            raise ValueError(f"{where}: {_first_problem(err, type(config))}") from None
        specs.append(
            TaskSpec(entry.name, index, task_config, entry.init_from, entry.num_virtual_tokens)
        )
    kinds = {is_vision(s.config) for s in specs}
    if len(kinds) > 1:
        raise ValueError("tasks: image tasks and text tasks cannot share one prompt bank")
    if config.method.prompt_tuning.ensemble > 1:
        raise ValueError(
            "tasks: a multi-task bank and method.prompt_tuning.ensemble exclude "
            "each other; train the ensemble per task"
        )
    return specs


def _merged(base: dict[str, Any], entry) -> dict[str, Any]:
    merged = {**base}
    merged["data"] = {**base["data"], **entry.data}
    task = {**base["task"], **entry.task}
    if entry.instruction is not None:
        task["instruction"] = entry.instruction
    merged["task"] = task
    method = {**base["method"]}
    method["prompt_tuning"] = {**method["prompt_tuning"], **entry.prompt_overrides()}
    merged["method"] = method
    return merged


def _first_problem(err: ValueError, model: type[RunConfig]) -> str:
    errors = getattr(err, "errors", None)
    return describe_error(errors()[0], model) if callable(errors) else str(err)


def task_specs(config: RunConfig) -> list[TaskSpec]:
    """The run's tasks, each with the data files it names present.

    Raises:
        ConfigError: the tasks do not resolve, or a task's data path does not exist
            (names the task, the key and the path).
    """
    try:
        specs = resolve_tasks(config)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    for spec in specs:
        _check_data_paths(spec, set(config.tasks[spec.index].data))
    return specs


def _check_data_paths(spec: TaskSpec, own_keys: set[str]) -> None:
    # Checked before any task is read, so a run does not stop at its second task's file
    # (or at the test split, after training) with a message that does not say which task.
    d = spec.config.data
    keys = ["train_path", "test_path"] + (["val_test_path"] if d.validation else [])
    for key in keys:
        path = getattr(d, key)
        if not path or path.startswith(("builtin:", "hf:")) or Path(path).exists():
            continue
        section = "this task's `data:`" if key in own_keys else "the config's `data:` section"
        raise ConfigError(
            f"tasks[{spec.index}] ({spec.name}): data.{key} {path}: not found (looked for "
            f"{Path(path).resolve()}); fix the path in {section}"
        )
