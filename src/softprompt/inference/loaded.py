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
from softprompt.backbones.base import EncodeSettings
from softprompt.backbones.loading import load_backbone
from softprompt.backbones.vision_base import VisionSettings
from softprompt.config.run import ConfigError
from softprompt.data.errors import DataError
from softprompt.data.images import load_image
from softprompt.inference.evaluate import WHOLE_SET, EvalShard, evaluate
from softprompt.tasks.kinds import Task, TextTask, VisionTask
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
        task: what the adapters were trained for.
        settings: tokenization lengths.
        task_record: the bundle's task record (template, fields, ...).
        device: where the model runs.
    """

    backbone: Any
    tuners: TunerSet
    task: Task
    settings: EncodeSettings
    task_record: dict[str, Any]
    device: torch.device

    def __post_init__(self) -> None:
        self.backbone.model.to(self.device)
        self.tuners.to(self.device)
        self.backbone.model.eval()

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
        name = model or bundle.base_model
        if name is None:
            raise PromptLoadError(f"{directory} does not record its base model; pass --model")
        vision = None
        if "vision_task" in record:
            try:
                vision = VisionSettings(
                    **{**record.get("vision", {}), "feature_cache": feature_cache}
                )
            except TypeError as err:
                raise PromptLoadError(f"{directory}: damaged 'vision' record ({err})") from None
        backbone = load_backbone(name, bundle.meta.get("family"), dtype, vision=vision)
        tuners = tuners_from_bundle(bundle, backbone)
        return cls(
            backbone,
            tuners,
            task_from_record(record, max_new_tokens),
            settings_from_record(record),
            record,
            torch.device(device) if device else default_device(),
        )

    @classmethod
    def bare_text_model(cls, name: str, max_new_tokens: int | None = None) -> LoadedModel:
        """A text model alone, no adapters (zero-shot `predict --model`)."""
        backbone = load_backbone(name)
        task = TextTask(max_new_tokens=max_new_tokens or 64)
        return cls(backbone, TunerSet([], backbone), task, EncodeSettings(), {}, default_device())

    def set_adapters(self, states: dict[str, bool]) -> None:
        """Hot switches, e.g. {"prompt": False}: no reload, the next call sees them."""
        for adapter, enabled in states.items():
            self.tuners.set_enabled(adapter, enabled)

    @property
    def bank(self):
        """The loaded prompt bank (several tasks or an ensemble), or None."""
        from softprompt.tuners.prompt_tuning.bank import PromptBank

        prompt = self.tuners.prompt
        return prompt if isinstance(prompt, PromptBank) else None

    def task_names(self) -> list[str]:
        """The tasks of a multi-task bank ([] for one prompt or an ensemble)."""
        bank = self.bank
        return bank.names if bank is not None and bank.kind == "tasks" else []

    def select_task(self, name: str, max_new_tokens: int | None = None) -> None:
        """Serve one task of a bank: its prompt, task, template and lengths.

        Raises:
            ConfigError: not a multi-task bank, or no such task (names the tasks).
        """
        if not self.task_names():
            raise ConfigError("--task needs a multi-task prompt bank; this model has one task")
        bank = self.bank
        bank.select(name)
        record = bank.records.get(name) or {}
        self.task = task_from_record(record, max_new_tokens)
        self.task_record = record
        self.settings = settings_from_record(record)

    def apply_template(self, text: str) -> str:
        """The training template, if the adapters were trained with one; else the text."""
        template = self.task_record.get("template")
        return template.format(input=text) if template else text

    def evaluate(
        self,
        examples: list,
        batch_size: int = 8,
        predict: bool = True,
        with_loss: bool = True,
        progress: bool = False,
        shard: EvalShard = WHOLE_SET,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Metrics and per-example records (see `softprompt.inference.evaluate.evaluate`); an
        ensemble's records combine its members (see `softprompt.inference.ensemble`)."""
        bank = self.bank
        if bank is not None and bank.kind == "ensemble" and bank.enabled:
            return self._evaluate_ensemble(examples, batch_size, predict, progress, shard)
        return evaluate(
            self.backbone,
            self.tuners.prompt_input,
            examples,
            self.task,
            self.settings,
            batch_size=batch_size,
            predict=predict,
            with_loss=with_loss,
            progress=progress,
            shard=shard,
        )

    def _evaluate_ensemble(self, examples, batch_size, predict, progress, shard):
        from softprompt.inference.ensemble import evaluate_ensemble

        sources = [
            lambda n, k=k: self.tuners.prompt_input(n, ids=torch.full((n,), k))
            for k in range(len(self.bank.members))
        ]
        metrics, records, members = evaluate_ensemble(
            self.backbone, sources, examples, self.task, self.settings,
            batch_size=batch_size, predict=predict, progress=progress, shard=shard,
        )  # fmt: skip
        for name, member in zip(self.bank.names, members, strict=True):
            metrics.update({f"{name}_{k}": v for k, v in member.items()})
        return metrics, records

    def predict(
        self, examples: list, batch_size: int = 8, progress: bool = False
    ) -> list[dict[str, Any]]:
        """One record per example (input order); an unreadable image gets an `error` record."""
        readable, failed = [], {}
        for index, example in enumerate(examples):
            path = getattr(example, "image_path", None)
            try:
                if path is not None:
                    load_image(path)
                readable.append(replace(example, target=None))
            except DataError as err:
                failed[index] = {"id": example.id, "image": path, "error": str(err)}
        if isinstance(self.task, VisionTask):
            readable = [replace(e, label=None) for e in readable]
        _, records = self.evaluate(readable, batch_size, with_loss=False, progress=progress)
        answered = iter(records)  # in input order, unreadable inputs left out
        return [failed[i] if i in failed else next(answered) for i in range(len(examples))]


def settings_from_record(record: dict[str, Any]) -> EncodeSettings:
    return EncodeSettings(
        max_input_length=record.get("max_input_length", 512),
        max_target_length=record.get("max_target_length", 128),
    )
