"""The examples of one split ("train", "val", "test") as a config describes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from softprompt.config.multitask import is_vision
from softprompt.config.run import ConfigError, RunConfig
from softprompt.data.errors import DataError
from softprompt.data.few_shot import class_subset, few_shot, shots_for
from softprompt.data.records import TextExample, VisionExample
from softprompt.data.text import load_text_examples
from softprompt.data.vision import load_image_folder, load_vision_examples


def _is_split_source(path: str) -> bool:
    """Sources holding several splits (builtins, hub datasets, DatasetDict dirs)."""
    if path.startswith(("builtin:", "hf:")):
        return True
    return (Path(path) / "dataset_dict.json").is_file()


def _class_protocol(
    config: RunConfig, split: str, examples: list[VisionExample], info: dict[str, Any]
) -> tuple[list[VisionExample], dict[str, Any]]:
    """`data.subsample_classes` and `data.num_shots` (see `softprompt.data.few_shot`)."""
    d = config.data
    own = info.get("classes") or sorted({e.label for e in examples if e.label})
    if d.subsample_classes != "all":
        # The halves are the training classes' (the dataset's label set, as CoOp's), so
        # a split that lacks a class does not shift them.
        universe = set(own) if split == "train" else set(own) | set(_training_classes(config))
        wanted = set(class_subset(sorted(universe), d.subsample_classes))
        examples = [e for e in examples if e.label in wanted]
        own = [c for c in own if c in wanted]
        if not own:
            raise ConfigError(
                f"data.subsample_classes {d.subsample_classes}: the {split} data has no "
                f"{d.subsample_classes} classes ({', '.join(sorted(wanted)) or 'none'})"
            )
    shots = shots_for(split, d.num_shots)
    if shots is not None:
        examples = few_shot(examples, shots, config.training.seed)
    return examples, ({**info, "classes": own} if "classes" in info else info)


def _training_classes(config: RunConfig) -> list[str]:
    """The class folders of `data.train_path` ([] when it is not a folder of them)."""
    path = config.data.train_path
    if not path or not Path(path).is_dir():
        return []
    try:
        return load_image_folder(path, check_images=False)[1]
    except DataError:
        return []


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
        if config.task.type == "classify":
            examples, info = _class_protocol(config, split, examples, info)
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
