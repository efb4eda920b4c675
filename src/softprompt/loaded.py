"""A loaded model: backbone + tuners on a device, loaded once and used for many requests.

`eval`, `predict` (and the server, reports and demo UI built on them) all go through
`LoadedModel`: it reads an adapter bundle (or a plain prompt directory, ours or PEFT's),
rebuilds the backbone it was trained on, checks the fingerprint, moves everything to the
device, and switches adapters on or off without reloading.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from softprompt.backbones.base import EncodeSettings
from softprompt.backbones.loading import load_backbone
from softprompt.backbones.vision_base import VisionSettings
from softprompt.data.errors import DataError
from softprompt.data.images import load_image
from softprompt.evaluate import WHOLE_SET, EvalShard, evaluate
from softprompt.tasks import Task, TextTask, VisionTask
from softprompt.tuners.bundle import Bundle, read_bundle
from softprompt.tuners.full.tuner import FullTuner, language_model
from softprompt.tuners.lora.tuner import LoraTuner
from softprompt.tuners.prompt_tuning.io import PromptLoadError, check_base_model, load_prompt
from softprompt.tuners.prompt_tuning.io import check_compatible as check_prompt
from softprompt.tuners.prompt_tuning.tuner import PromptTuner
from softprompt.tuners.tuner_set import TunerSet

logger = logging.getLogger("softprompt")


def default_device() -> torch.device:
    """The accelerator when there is one (CUDA, MPS, ...), else the CPU."""
    probe = getattr(torch, "accelerator", None)
    if probe is not None and probe.is_available():
        return torch.device(probe.current_accelerator().type)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def tuners_from_bundle(bundle: Bundle, backbone) -> TunerSet:
    """The bundle's adapters, loaded frozen into `backbone`, each on or off as saved."""
    check_base_model(bundle.meta, bundle.directory, backbone)
    tuners = []
    for adapter in bundle.adapters.values():
        if adapter.method == "prompt_tuning":
            loaded = load_prompt(adapter.path)
            check_prompt(loaded, backbone)
            device = backbone.word_embeddings().device
            tuner = PromptTuner.from_weight(loaded.weight.to(device))
        elif adapter.method == "lora":
            tuner = LoraTuner.from_dir(backbone, adapter.path, trainable=False)
        elif adapter.method == "full":
            tuner = FullTuner(language_model(backbone), learning_rate=0.0)
            tuner.load(adapter.path)
            tuner.target.requires_grad_(False)
            tuner.trainable = False
        else:
            raise PromptLoadError(f"{adapter.path}: unknown adapter method {adapter.method!r}")
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
        name = model or bundle.base_model or _peft_base(bundle)
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
    def bare(cls, backbone, task: Task, settings: EncodeSettings, device=None) -> LoadedModel:
        """The backbone alone (zero-shot)."""
        device = torch.device(device) if device else default_device()
        return cls(backbone, TunerSet([], backbone), task, settings, {}, device)

    def set_adapters(self, states: dict[str, bool]) -> None:
        """Hot switches, e.g. {"prompt": False}: no reload, the next call sees them."""
        for adapter, enabled in states.items():
            self.tuners.set_enabled(adapter, enabled)

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
        """Metrics and per-example records (see `softprompt.evaluate.evaluate`)."""
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


def _peft_base(bundle: Bundle) -> str | None:
    """A PEFT prompt names its base model in adapter_config.json."""
    prompt = bundle.adapters.get("prompt")
    if prompt is None:
        return None
    return load_prompt(prompt.path).base_model
