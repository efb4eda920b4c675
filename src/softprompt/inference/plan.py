"""The inference plan: which prompt each row uses, which task scores it, how members combine.

One plan describes every prompt kind a model can carry:

- one prompt (or none, zero-shot): a single route;
- a multi-task bank: one route per task, each naming its prompt's id in the bank, its task
  (template, classes, scoring) and its tokenization lengths;
- an ensemble: a single route whose rows run once per member, the members' outputs combined
  (`softprompt.inference.ensemble`).

A plan is immutable. Training's evaluation, `eval`, `predict` and the server read it and
never change it, so one model answers requests for different prompts at the same time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from softprompt.backbones.base import EncodeSettings
from softprompt.backbones.prompt_input import PromptInput
from softprompt.config.errors import ConfigError
from softprompt.tasks.kinds import Task

# The route of a model with one task (a single prompt, an ensemble, the bare model).
DEFAULT_ROUTE = ""


@dataclass(frozen=True)
class Route:
    """How the rows of one task are answered.

    Attributes:
        name: the task's name (its prompt's name in a bank; `DEFAULT_ROUTE` for one task).
        task: what the model reads and says, and how outputs are scored.
        settings: tokenization lengths of this task.
        record: the task record its prompt was saved with (template, input_field, ...).
        prompt_id: the row prompt id in the bank (None: the model's one prompt, or none).
    """

    name: str
    task: Task
    settings: EncodeSettings = field(default_factory=EncodeSettings)
    record: dict[str, Any] = field(default_factory=dict)
    prompt_id: int | None = None

    def apply_template(self, text: str) -> str:
        """The training template, if the prompt was trained with one; else the text."""
        template = self.record.get("template")
        return template.format(input=text) if template else text


@dataclass(frozen=True)
class InferencePlan:
    """Routes by name, the route used when a request names none, and ensemble members.

    Attributes:
        routes: name -> route, in bank order.
        default: the route of requests that name no task (None: every request must).
        members: an ensemble's member prompt ids and names (empty: no ensemble).
        multitask: metrics are reported per task plus their mean (`<task>_<metric>`).
    """

    routes: dict[str, Route]
    default: str | None = DEFAULT_ROUTE
    members: tuple[tuple[int, str], ...] = ()
    multitask: bool = False

    @classmethod
    def single(
        cls,
        task: Task,
        settings: EncodeSettings | None = None,
        record: dict[str, Any] | None = None,
        members: tuple[tuple[int, str], ...] = (),
    ) -> InferencePlan:
        """One task: one prompt, the bare model, or an ensemble's `members`."""
        route = Route(DEFAULT_ROUTE, task, settings or EncodeSettings(), record or {})
        return cls({DEFAULT_ROUTE: route}, DEFAULT_ROUTE, members)

    @classmethod
    def tasks(cls, routes: list[Route]) -> InferencePlan:
        """A multi-task bank: a request names its task (no default)."""
        return cls({r.name: r for r in routes}, None, (), multitask=True)

    @property
    def names(self) -> list[str]:
        """The task names of a multi-task plan ([] for one task)."""
        return list(self.routes) if self.multitask else []

    def route(self, name: str | None = None) -> Route:
        """The route of a request naming `name` (None: the default route).

        Raises:
            ConfigError: no such task, or none named where the plan has several.
        """
        if name is None or name == DEFAULT_ROUTE:
            if self.default is None:
                raise ConfigError(
                    f"this prompt bank has tasks {', '.join(self.routes)}: name one "
                    "(--task NAME, or a 'task' field per input record)"
                )
            return self.routes[self.default]
        if name not in self.routes:
            if not self.multitask:
                raise ConfigError(
                    f"task {name!r}: this model has one task (no multi-task prompt bank)"
                )
            raise ConfigError(f"no task {name!r} in this prompt bank (it has: {', '.join(self)})")
        return self.routes[name]

    def __iter__(self):
        return iter(self.routes)

    def with_default(self, name: str, max_new_tokens: int | None = None) -> InferencePlan:
        """The same plan answering requests that name no task with task `name`."""
        route = self.route(name)
        if max_new_tokens:
            route = replace(route, task=replace(route.task, max_new_tokens=max_new_tokens))
        return replace(self, routes={**self.routes, name: route}, default=name)

    def only(self, name: str | None) -> InferencePlan:
        """A one-task plan of route `name` (None: the default), ensemble members kept."""
        route = self.route(name)
        return replace(self, routes={route.name: route}, default=route.name, multitask=False)

    def with_route(self, route: Route) -> InferencePlan:
        """The same plan with one route replaced (e.g. a task rebuilt from a config)."""
        return replace(self, routes={**self.routes, route.name: route})


def route_prompts(tuners, prompt_id: int | None):
    """The prompt source of one route: (rows) -> the batch's `PromptInput` or None."""
    if prompt_id is None:
        return tuners.prompt_input

    def prompts(rows: int) -> PromptInput | None:
        return tuners.prompt_input(rows, ids=torch.full((rows,), prompt_id, dtype=torch.long))

    return prompts


def rows_prompts(tuners, prompt_ids: list[int | None]) -> PromptInput | None:
    """The `PromptInput` of rows that each name their prompt id (None: the one prompt)."""
    if all(i is None for i in prompt_ids):
        return tuners.prompt_input(len(prompt_ids))
    if any(i is None for i in prompt_ids):
        raise ValueError("rows mix a bank's prompts with the model's single prompt")
    return tuners.prompt_input(len(prompt_ids), ids=torch.tensor(prompt_ids, dtype=torch.long))
