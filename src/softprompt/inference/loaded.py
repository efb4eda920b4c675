"""A loaded model: backbone + tuners on a device, loaded once and used for many requests.

`eval`, `predict` (and the server, reports and demo UI built on them) all go through
`LoadedModel`: it reads an adapter bundle (or a plain prompt directory, ours or PEFT's),
rebuilds the backbone it was trained on, checks the fingerprint, moves everything to the
device, and switches adapters on or off without reloading.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from softprompt.artifacts.bundle import Bundle, read_bundle
from softprompt.artifacts.prompt_dir import PromptLoadError, check_base_model
from softprompt.backbones.base import Backbone, EncodeSettings, VisionLanguageBackbone
from softprompt.backbones.loading import load_backbone
from softprompt.backbones.vision_base import VisionSettings
from softprompt.config.run import ConfigError
from softprompt.data.errors import DataError
from softprompt.data.images import load_image
from softprompt.data.records import VisionExample
from softprompt.inference.evaluate import WHOLE_SET, EvalShard
from softprompt.inference.execute import EvalOptions, Request, answer, evaluate_plan
from softprompt.inference.plan import InferencePlan, Route
from softprompt.inference.predict_io import UnreadableInput
from softprompt.tasks.kinds import (
    DEFAULT_INSTRUCTIONS,
    DEFAULT_TEMPLATES,
    Task,
    TextTask,
    VisionTask,
)
from softprompt.tuners.base import SAVED_TUNERS
from softprompt.tuners.tuner_set import TunerSet, register_tuners


def default_device() -> torch.device:
    """The accelerator when there is one (CUDA, MPS, ...), else the CPU."""
    probe = getattr(torch, "accelerator", None)
    if probe is not None and probe.is_available():
        return torch.device(probe.current_accelerator().type)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def tuners_from_bundle(bundle: Bundle, backbone) -> TunerSet:
    """The bundle's adapters, loaded frozen into `backbone`, each on or off as saved."""
    check_base_model(bundle.meta, bundle.directory, backbone)
    register_tuners()
    tuners = []
    for adapter in bundle.adapters.values():
        if adapter.method not in SAVED_TUNERS:
            raise PromptLoadError(f"{adapter.path}: unknown adapter method {adapter.method!r}")
        tuner = SAVED_TUNERS.get(adapter.method)(backbone, bundle, adapter)
        if not adapter.enabled:
            tuner.set_enabled(False)
        tuners.append(tuner)
    if bundle.extras:
        backbone.load_saved_state(bundle.extras)
    return TunerSet(tuners, backbone)


def task_from_record(record: dict[str, Any], max_new_tokens: int | None = None) -> Task:
    """The task a bundle was trained for (text2text when it records none)."""
    if "vision_task" in record:
        task: Task = VisionTask.from_record(record["vision_task"])
    else:
        task = TextTask(max_new_tokens=record.get("max_new_tokens", 64))
    if max_new_tokens:
        task.max_new_tokens = max_new_tokens
    return task


@dataclass
class LoadedModel:
    """A backbone with its tuners on one device, ready for evaluation and prediction.

    Attributes:
        backbone: the frozen model (with LoRA layers inside when a bundle has LoRA).
        tuners: the loaded adapters (empty: the bare model, zero-shot).
        plan: which prompt and task each request uses (see `softprompt.inference.plan`).
        device: where the model runs.
    """

    backbone: Backbone
    tuners: TunerSet
    plan: InferencePlan
    device: torch.device

    def __post_init__(self) -> None:
        self.backbone.model.to(self.device)
        self.tuners.to(self.device)
        self.backbone.model.eval()
        self.backbone.bind_task(self.task)

    @classmethod
    def from_bundle(
        cls,
        directory: str | Path,
        model: str | None = None,
        dtype: str = "float32",
        device: torch.device | str | None = None,
        max_new_tokens: int | None = None,
        feature_cache: str = "memory",
    ) -> LoadedModel:
        """Rebuild the base model a bundle records (or `model`) and load its adapters."""
        bundle = read_bundle(directory)
        record = bundle.task
        backbone = backbone_for_bundle(bundle, model, dtype, feature_cache)
        tuners = tuners_from_bundle(bundle, backbone)
        plan = plan_for(tuners, record, max_new_tokens)
        return cls(backbone, tuners, plan, torch.device(device) if device else default_device())

    @classmethod
    def zero_shot(
        cls,
        backbone: Backbone,
        task: Task,
        settings: EncodeSettings | None = None,
        record: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
    ) -> LoadedModel:
        """The frozen model alone with a task's hard prompt, no adapters: what zero-shot
        `predict --model` and the baseline answer with.

        Args:
            record: the task record; its `template` wraps text inputs.
        """
        plan = InferencePlan.single(task, settings, record)
        where = torch.device(device) if device else default_device()
        return cls(backbone, TunerSet([], backbone), plan, where)

    @classmethod
    def bare_model(
        cls,
        name: str,
        max_new_tokens: int | None = None,
        question: bool = False,
        instruction: str | None = None,
    ) -> LoadedModel:
        """A model alone, no adapters (zero-shot `predict --model`), any family.

        A vision-language model captions, or with `question` answers questions, with its
        task's default hard prompt (`DEFAULT_TEMPLATES`) or `instruction`; a text model
        reads its input as given, after `instruction` when there is one.
        """
        backbone = load_backbone(name)
        vision = reads_images(backbone)
        task, record = zero_shot_task(vision, question, instruction, max_new_tokens)
        return cls.zero_shot(backbone, task, record=record)

    @property
    def reads_images(self) -> bool:
        """Whether the backbone takes images (a vision-language family)."""
        return reads_images(self.backbone)

    def use_task(self, task: Task) -> None:
        """Answer with `task` from now on (zero-shot: caption or vqa, chosen by input)."""
        self.plan = self.plan.with_route(replace(self.route, task=task))
        self.backbone.bind_task(task)

    def set_adapters(self, states: dict[str, bool]) -> None:
        """Hot switches, e.g. {"prompt": False}: no reload, the next call sees them."""
        for adapter, enabled in states.items():
            self.tuners.set_enabled(adapter, enabled)

    # The default route's task, settings and record (the first task of a bank that has no
    # default): what single-task callers (eval, the demo UI) read.
    @property
    def route(self) -> Route:
        plan = self.plan
        return plan.routes[plan.default if plan.default is not None else next(iter(plan))]

    @property
    def task(self) -> Task:
        return self.route.task

    @property
    def settings(self) -> EncodeSettings:
        return self.route.settings

    @property
    def task_record(self) -> dict[str, Any]:
        return self.route.record

    def task_names(self) -> list[str]:
        """The tasks of a multi-task bank ([] for one prompt or an ensemble)."""
        return self.plan.names

    def select_task(self, name: str, max_new_tokens: int | None = None) -> None:
        """Make `name` the task of requests that name none (a bank's --task).

        Raises:
            ConfigError: not a multi-task bank, or no such task (names the tasks).
        """
        if not self.plan.multitask:
            raise ConfigError("--task needs a multi-task prompt bank; this model has one task")
        self.plan = self.plan.with_default(name, max_new_tokens)

    def apply_template(self, text: str, task: str | None = None) -> str:
        """The training template of `task` (default: the default route's), if any."""
        route = self.plan.route(task) if task else self.route
        return route.apply_template(text)

    def active_plan(self) -> InferencePlan:
        """The plan as the switches stand: a switched-off ensemble answers as one model."""
        prompt = self.tuners.prompt
        if self.plan.members and (prompt is None or not prompt.enabled):
            return replace(self.plan, members=())
        return self.plan

    def evaluate(
        self,
        examples: list,
        batch_size: int = 8,
        predict: bool = True,
        with_loss: bool = True,
        progress: bool = False,
        shard: EvalShard = WHOLE_SET,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Metrics and records of the default task (see `execute.evaluate_plan`); an
        ensemble's records combine its members."""
        options = EvalOptions(batch_size, predict, with_loss, progress, shard=shard)
        plan = self.active_plan().only(None)
        return evaluate_plan(self.backbone, self.tuners, plan, examples, options)

    def answer(
        self, requests: list[Request], batch_size: int = 8, progress: bool = False
    ) -> list[dict[str, Any]]:
        """One record per request, rows of different prompts and tasks in mixed batches
        (see `softprompt.inference.execute.answer`); changes nothing shared."""
        plan = self.active_plan()
        return answer(self.backbone, self.tuners, plan, requests, batch_size, progress)

    def predict(
        self,
        examples: list,
        batch_size: int = 8,
        progress: bool = False,
        tasks: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        """One record per example (input order); an unreadable image gets an `error` record.

        Args:
            tasks: each example's task in a multi-task bank (None: the default task).
        """
        requests, failed = [], {}
        for index, example in enumerate(examples):
            task = tasks[index] if tasks else None
            error = unreadable(example)
            if error is None:
                requests.append(Request(example, task))
            else:
                failed[index] = {"task": task, **error} if tasks else error
        answered = iter(self.answer(requests, batch_size, progress))  # unreadable inputs left out
        return [failed[i] if i in failed else next(answered) for i in range(len(examples))]


def unreadable(example: Any) -> dict[str, Any] | None:
    """The error record of an input that cannot be answered (None: it can): a record
    the reader could not read, or an image that does not open."""
    if isinstance(example, UnreadableInput):
        return example.record()
    if isinstance(example, VisionExample):
        try:
            load_image(example.image_path)
        except DataError as err:
            return {"id": example.id, "image": example.image_path, "error": str(err)}
    return None


def reads_images(backbone: Backbone) -> bool:
    """Whether `backbone` is a vision-language family (it reads an image first)."""
    return isinstance(backbone, VisionLanguageBackbone)


def zero_shot_task(
    vision: bool,
    question: bool = False,
    instruction: str | None = None,
    max_new_tokens: int | None = None,
) -> tuple[Task, dict[str, Any]]:
    """(task, task record) of the bare model: caption, or vqa with `question`, with the
    default hard prompt or `instruction`; for text models, `instruction` before the input.
    """
    if not vision:
        task = TextTask(max_new_tokens=max_new_tokens or TextTask.max_new_tokens)
        if instruction is None:
            return task, {}
        escaped = instruction.replace("{", "{{").replace("}", "}}")
        return task, {"template": f"{escaped} {{input}}"}
    kind = "vqa" if question else "caption"
    template = DEFAULT_TEMPLATES[kind]
    if instruction is not None and kind == "vqa":
        template = "{instruction} " + template  # the default vqa prompt has no instruction
    chosen = instruction if instruction is not None else DEFAULT_INSTRUCTIONS[kind]
    tokens = max_new_tokens or VisionTask.max_new_tokens
    return VisionTask(kind, template, chosen, max_new_tokens=tokens), {}


def backbone_for_bundle(
    bundle: Bundle, model: str | None = None, dtype: str = "float32", feature_cache: str = "memory"
) -> Backbone:
    """The base model a bundle records (or `model`), built as it was trained (family,
    image settings, quantization).

    Raises:
        PromptLoadError: no base model recorded and none given, or a damaged record.
    """
    record = bundle.task
    name = model or bundle.base_model
    if name is None:
        raise PromptLoadError(f"{bundle.directory} does not record its base model; pass --model")
    vision = None
    if "vision_task" in record:
        try:
            vision = VisionSettings(**{**record.get("vision", {}), "feature_cache": feature_cache})
        except TypeError as err:
            raise PromptLoadError(f"{bundle.directory}: damaged 'vision' record ({err})") from None
    bits = record.get("quantization_bit")
    return load_backbone(
        name, bundle.meta.get("family"), dtype, vision=vision, quantization_bit=bits
    )


def plan_for(
    tuners: TunerSet, record: dict[str, Any], max_new_tokens: int | None = None
) -> InferencePlan:
    """The plan of loaded adapters: a bank's tasks or ensemble members, or one task."""
    prompt = tuners.prompt
    kind = prompt.kind if prompt is not None else None
    if kind == "tasks":
        routes = [
            Route(
                name,
                task_from_record(prompt.records.get(name) or {}, max_new_tokens),
                settings_from_record(prompt.records.get(name) or {}),
                prompt.records.get(name) or {},
                prompt_id=index,
            )
            for index, name in enumerate(prompt.names)
        ]
        return InferencePlan.tasks(routes)
    members = tuple(enumerate(prompt.names)) if kind == "ensemble" else ()
    task = task_from_record(record, max_new_tokens)
    return InferencePlan.single(task, settings_from_record(record), record, members)


def settings_from_record(record: dict[str, Any]) -> EncodeSettings:
    return EncodeSettings(
        max_input_length=record.get("max_input_length", 512),
        max_target_length=record.get("max_target_length", 128),
    )
