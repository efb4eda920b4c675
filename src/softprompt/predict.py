"""Batched prediction with a saved prompt: the prompt directory says everything needed."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from softprompt.backbones.base import Backbone, EncodeSettings, input_lengths
from softprompt.backbones.loading import load_backbone
from softprompt.backbones.vision_base import VisionSettings
from softprompt.data.batching import epoch_batches
from softprompt.data.errors import DataError
from softprompt.data.images import IMAGE_EXTENSIONS, load_image
from softprompt.data.records import TextExample, VisionExample
from softprompt.data.text import load_text_examples
from softprompt.data.vision import load_vision_examples
from softprompt.evaluate import expand_prompt
from softprompt.evaluate_vision import evaluate_vision
from softprompt.tasks import VisionTask
from softprompt.tuners.prompt_tuning.io import (
    LoadedPrompt,
    PromptLoadError,
    check_compatible,
    load_prompt,
)

logger = logging.getLogger("softprompt")


@dataclass
class Predictor:
    """A backbone with a loaded prompt, ready to answer batches of inputs."""

    backbone: Backbone
    prompt: LoadedPrompt | None
    settings: EncodeSettings
    template: str | None
    max_new_tokens: int

    @classmethod
    def from_prompt_dir(
        cls,
        prompt_dir: str | Path | None,
        model: str | None = None,
        dtype: str = "float32",
        max_new_tokens: int | None = None,
    ) -> Predictor:
        """Load the base model named in the prompt's metadata (or `model`) and the prompt."""
        loaded = load_prompt(prompt_dir) if prompt_dir is not None else None
        task = loaded.meta.get("task", {}) if loaded else {}
        name = model or (loaded.base_model if loaded else None)
        if name is None:
            raise PromptLoadError(
                f"prompt {prompt_dir} does not record its base model; pass --model"
            )
        family = loaded.meta.get("family") if loaded else None
        backbone = load_backbone(name, family, dtype)
        if loaded is not None:
            check_compatible(loaded, backbone)
        settings = EncodeSettings(
            max_input_length=task.get("max_input_length", 512),
            max_target_length=task.get("max_target_length", 128),
        )
        return cls(
            backbone,
            loaded,
            settings,
            task.get("template"),
            max_new_tokens or task.get("max_new_tokens", 64),
        )

    def _prompt_tensor(self) -> torch.Tensor | None:
        if self.prompt is None:
            return None
        device = next(self.backbone.model.parameters()).device
        return self.prompt.weight.to(device, self.backbone.word_embeddings().dtype)

    def apply_template(self, text: str) -> str:
        """The training template, if the prompt was trained with one; else the text as is."""
        return self.template.format(input=text) if self.template else text

    @torch.no_grad()
    def predict(
        self, examples: list[TextExample], batch_size: int = 8, progress: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Yield one record per example, in input order, generating in length-sorted batches."""
        self.backbone.model.eval()
        prompt = self._prompt_tensor()
        lengths = input_lengths(examples, self.backbone.tokenizer)
        batches = epoch_batches(lengths, batch_size, seed=0, epoch=0, shuffle=False)
        results: dict[int, str] = {}
        device = next(self.backbone.model.parameters()).device
        for indices in tqdm(batches, desc="predict", disable=not progress):
            chunk = [examples[i] for i in indices]
            batch = self.backbone.collate(chunk, self.settings, with_targets=False)
            batch = {k: v.to(device) for k, v in batch.items()}
            texts = self.backbone.generate(
                batch, expand_prompt(prompt, len(chunk)), self.max_new_tokens
            )
            results.update(zip(indices, texts, strict=True))
        for i, example in enumerate(examples):
            yield {"id": example.id, "input": example.input, "prediction": results[i]}


def read_inputs(path: str, input_field: str, template: str | None) -> list[TextExample]:
    """Prediction inputs from a JSONL/JSON/CSV file (targets optional)."""
    return load_text_examples(
        path, input_field=input_field, template=template, require_target=False
    )


def write_records(records: list[dict[str, Any]], output: str | Path) -> None:
    """JSONL for .jsonl paths, else one JSON array."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:
        text = json.dumps(records, ensure_ascii=False, indent=2)
    output.write_text(text, encoding="utf-8")


@dataclass
class VisionPredictor:
    """A vision-language backbone with its prompt (and trained projection) and task."""

    backbone: Any
    prompt: LoadedPrompt | None
    task: VisionTask
    settings: EncodeSettings

    @classmethod
    def from_prompt_dir(
        cls,
        prompt_dir: str | Path,
        model: str | None = None,
        dtype: str = "float32",
        max_new_tokens: int | None = None,
        feature_cache: str = "memory",
    ) -> VisionPredictor:
        """Rebuild the model a prompt was trained on from its metadata and load the prompt."""
        loaded = load_prompt(prompt_dir)
        record = loaded.meta.get("task", {})
        if "vision_task" not in record:
            raise PromptLoadError(f"prompt {prompt_dir} was not trained for an image task")
        try:
            vision = VisionSettings(**{**record.get("vision", {}), "feature_cache": feature_cache})
        except TypeError as err:
            raise PromptLoadError(f"prompt {prompt_dir}: damaged 'vision' record ({err})") from None
        name = model or loaded.base_model
        backbone = load_backbone(name, loaded.meta.get("family"), dtype, vision=vision)
        check_compatible(loaded, backbone)
        if loaded.extra:
            backbone.load_saved_state(loaded.extra)
        task = VisionTask.from_record(record["vision_task"])
        if max_new_tokens:
            task.max_new_tokens = max_new_tokens
        settings = EncodeSettings(
            max_input_length=record.get("max_input_length", 512),
            max_target_length=record.get("max_target_length", 128),
        )
        return cls(backbone, loaded, task, settings)

    def predict(
        self, examples: list[VisionExample], batch_size: int = 8, progress: bool = False
    ) -> list[dict[str, Any]]:
        """One record per example (input order); unreadable images get an `error` record."""
        readable, failed = [], {}
        for example in examples:
            try:
                load_image(example.image_path)
                readable.append(example)
            except DataError as err:
                failed[example.id] = str(err)
        prompt = None
        if self.prompt is not None:
            device = next(self.backbone.model.parameters()).device
            prompt = self.prompt.weight.to(device, self.backbone.word_embeddings().dtype)
        _, records = evaluate_vision(
            self.backbone,
            prompt,
            [replace(e, target=None, label=None) for e in readable],
            self.task,
            self.settings,
            batch_size=batch_size,
            with_loss=False,
            progress=progress,
        )
        by_id = {r["id"]: r for r in records}
        out = []
        for example in examples:
            if example.id in failed:
                out.append(
                    {"id": example.id, "image": example.image_path, "error": failed[example.id]}
                )
            else:
                out.append(by_id[example.id])
        return out


def image_inputs(
    images: list[str] | None = None,
    image_dir: str | None = None,
    input_file: str | None = None,
    question: str | None = None,
) -> list[VisionExample]:
    """Prediction inputs from `--image`, `--image-dir` or a JSONL/JSON file of records."""
    examples: list[VisionExample] = []
    for path in images or []:
        examples.append(VisionExample(id=path, image_path=path, text=question or ""))
    if image_dir is not None:
        root = Path(image_dir)
        if not root.is_dir():
            raise DataError(f"--image-dir {image_dir}: not a directory")
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                rel = str(path.relative_to(root))
                examples.append(VisionExample(id=rel, image_path=str(path), text=question or ""))
    if input_file is not None:
        found, _ = load_vision_examples(
            input_file, task_type="vqa", check_images=False, require_text=False
        )
        for e in found:
            examples.append(replace(e, text=question or e.text, target=None))
    if not examples:
        raise DataError("no input images: give --image, --image-dir (with images) or --input")
    return examples


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per prediction and of unreadable inputs (printed after a run)."""
    counts: dict[str, int] = {}
    for record in records:
        if "prediction" in record:
            counts[record["prediction"]] = counts.get(record["prediction"], 0) + 1
    errors = sum(1 for r in records if "error" in r)
    return {"total": len(records), "errors": errors, "predictions": counts}
