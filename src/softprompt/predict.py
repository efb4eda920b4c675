"""Batched prediction with a saved prompt: the prompt directory says everything needed."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from softprompt.backbones.base import Backbone, EncodeSettings, input_lengths
from softprompt.backbones.loading import load_backbone
from softprompt.data.batching import epoch_batches
from softprompt.data.records import TextExample
from softprompt.data.text import load_text_examples
from softprompt.evaluate import expand_prompt
from softprompt.tuners.prompt_tuning.io import LoadedPrompt, check_compatible, load_prompt

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
            raise ValueError(f"prompt {prompt_dir} does not record its base model; pass --model")
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
