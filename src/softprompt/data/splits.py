"""The examples of one split ("train", "val", "test") as a config describes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from softprompt.config.multitask import is_vision
from softprompt.config.run import ConfigError, RunConfig
from softprompt.data.records import TextExample, VisionExample
from softprompt.data.text import load_text_examples
from softprompt.data.vision import load_vision_examples


def _is_split_source(path: str) -> bool:
    """Sources holding several splits (builtins, hub datasets, DatasetDict dirs)."""
    if path.startswith(("builtin:", "hf:")):
        return True
    return (Path(path) / "dataset_dict.json").is_file()


def load_split(config: RunConfig, split: str) -> list[TextExample] | list[VisionExample]:
    """Examples of one split; see `load_split_with_info`."""
    return load_split_with_info(config, split)[0]


def load_split_with_info(
    config: RunConfig, split: str
) -> tuple[list[TextExample] | list[VisionExample], dict[str, Any]]:
    """Examples of one split ("train", "val" or "test") as the config describes them.

    `val` comes from `data.val_test_path`; when that is unset and the training source
    has splits of its own (aclsum, a hub dataset), its validation split is used.
    """
    d = config.data
    if split == "train":
        path, limit = d.train_path, d.max_train_samples
    elif split == "val":
        if not d.validation:
            return [], {}
        path, limit = d.val_test_path, d.max_eval_samples
        if path is None and d.train_path and _is_split_source(d.train_path):
            path = d.train_path
    else:
        path, limit = d.test_path, d.max_eval_samples
        if path is None and d.train_path and _is_split_source(d.train_path):
            path = d.train_path
    if path is None:
        if split == "train":
            raise ConfigError("data.train_path is required for training")
        return [], {}
    if split == "val" and path == d.val_test_path and _is_split_source(path):
        source_split = "val"
    else:
        source_split = split
    if is_vision(config):
        fields: dict[str, Any] = {"image_field": d.image_field, "text_field": d.text_field}
        if config.task.type == "vqa":
            fields.update(prompt_field=d.question_field, text_field=d.answer_field)
        examples, info = load_vision_examples(
            path, task_type=config.task.type, split=source_split, strict=d.strict, **fields
        )
        return (examples[:limit] if limit else examples), info
    examples = load_text_examples(
        path,
        format=d.format,
        input_field=d.input_field,
        target_field=d.target_field,
        id_field=d.id_field,
        template=d.template,
        split=source_split,
        max_samples=limit,
    )
    return examples, {}
