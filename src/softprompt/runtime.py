"""Build what a run needs (backbone, data, settings) from a validated config."""

from __future__ import annotations

import logging
from pathlib import Path

from softprompt.backbones.base import Backbone, EncodeSettings
from softprompt.backbones.loading import load_backbone
from softprompt.config import ConfigError, RunConfig
from softprompt.data.records import TextExample
from softprompt.data.text import load_text_examples

logger = logging.getLogger("softprompt")


def backbone_from_config(config: RunConfig, name_or_path: str | None = None) -> Backbone:
    m = config.model
    return load_backbone(name_or_path or m.name_or_path, m.family, m.dtype, m.trust_remote_code)


def encode_settings(config: RunConfig) -> EncodeSettings:
    return EncodeSettings(
        max_input_length=config.data.max_input_length,
        max_target_length=config.data.max_target_length,
    )


def _is_split_source(path: str) -> bool:
    """Sources holding several splits (builtins, hub datasets, DatasetDict dirs)."""
    if path.startswith(("builtin:", "hf:")):
        return True
    return (Path(path) / "dataset_dict.json").is_file()


def load_split(config: RunConfig, split: str) -> list[TextExample]:
    """Examples of one split ("train", "val" or "test") as the config describes them.

    `val` comes from `data.val_test_path`; when that is unset and the training source
    has splits of its own (aclsum, a hub dataset), its validation split is used.
    """
    d = config.data
    if split == "train":
        path, limit = d.train_path, d.max_train_samples
    elif split == "val":
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
        return []
    if split == "val" and path == d.val_test_path and _is_split_source(path):
        source_split = "val"
    else:
        source_split = split
    return load_text_examples(
        path,
        format=d.format,
        input_field=d.input_field,
        target_field=d.target_field,
        id_field=d.id_field,
        template=d.template,
        split=source_split,
        max_samples=limit,
    )


def task_record(config: RunConfig) -> dict:
    """What a saved prompt remembers of its task, so predict needs no config."""
    return {
        "type": config.task.type,
        "template": config.data.template,
        "input_field": config.data.input_field,
        "max_input_length": config.data.max_input_length,
        "max_target_length": config.data.max_target_length,
        "max_new_tokens": config.task.max_new_tokens,
    }
