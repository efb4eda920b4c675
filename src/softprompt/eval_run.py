"""`softprompt eval`: score a prompt (or the bare model) on a config's val/test data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from softprompt.config import ConfigError, RunConfig
from softprompt.evaluate import evaluate
from softprompt.evaluate_vision import evaluate_vision
from softprompt.predict import write_records
from softprompt.runtime import (
    backbone_from_config,
    encode_settings,
    is_vision,
    load_split,
    load_split_with_info,
)
from softprompt.tasks import VisionTask
from softprompt.tuners.prompt_tuning.io import check_compatible, load_prompt


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


def run_evaluation(
    config: RunConfig,
    prompt_dir: str | None = None,
    model: str | None = None,
    splits: tuple[str, ...] = ("val", "test"),
    predict: bool = True,
    progress: bool = False,
    predictions_path: str | None = None,
) -> dict[str, Any]:
    """Metrics per split; without `prompt_dir` the bare model is scored (zero-shot).

    For image tasks, a prompt directory's own task record (classes, label words,
    template) takes precedence over the config, so the prompt is scored the way it was
    trained.
    """
    loaded = load_prompt(prompt_dir) if prompt_dir else None
    backbone = backbone_from_config(config, model)
    prompt = None
    if loaded is not None:
        check_compatible(loaded, backbone)
        if loaded.extra:
            backbone.load_saved_state(loaded.extra)
        prompt = loaded.weight.to(backbone.word_embeddings().dtype)
    task = None
    if is_vision(config):
        record = (loaded.meta.get("task", {}) if loaded else {}).get("vision_task")
        task = (
            VisionTask.from_record(record)
            if record
            else VisionTask.from_config(config, _classes(config))
        )
    settings = encode_settings(config)
    batch_size = config.training.eval_batch_size or config.training.batch_size
    results: dict[str, Any] = {"prompt": prompt_dir, "model": backbone.name_or_path}
    for split in splits:
        examples = load_split(config, split)
        if not examples:
            continue
        if task is not None:
            metrics, records = evaluate_vision(
                backbone,
                prompt,
                examples,
                task,
                settings,
                batch_size=batch_size,
                predict=predict or task.options() is not None,
                progress=progress,
            )
        else:
            metrics, predictions = evaluate(
                backbone,
                prompt,
                examples,
                settings,
                batch_size=batch_size,
                max_new_tokens=config.task.max_new_tokens,
                generate=predict,
                progress=progress,
            )
            records = [
                {"id": e.id, "input": e.input, "target": e.target, "prediction": p}
                for e, p in zip(examples, predictions, strict=False)
            ]
        results[split] = metrics
        if predictions_path:
            write_records(records, Path(predictions_path).with_suffix(f".{split}.jsonl"))
    return results
