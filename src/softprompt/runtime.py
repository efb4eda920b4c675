"""Build what a run needs (backbone, data, settings) from a validated config."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from softprompt.backbones.base import Backbone, EncodeSettings
from softprompt.backbones.loading import load_backbone
from softprompt.backbones.vision_base import VisionSettings
from softprompt.config import ConfigError, RunConfig
from softprompt.data.records import TextExample, VisionExample
from softprompt.data.text import load_text_examples
from softprompt.data.vision import load_vision_examples

logger = logging.getLogger("softprompt")


def is_vision(config: RunConfig) -> bool:
    """Image tasks (classify, caption, vqa) as opposed to text-to-text."""
    return config.task.type != "text2text"


def vision_settings(config: RunConfig) -> VisionSettings:
    m, pt, d = config.model, config.method.prompt_tuning, config.data
    cache_dir = d.cache_dir
    if d.feature_cache == "disk" and cache_dir is None:
        cache_dir = str(Path(config.training.output_dir) / "feature_cache")
    return VisionSettings(
        placement=pt.placement,
        qformer_prompt_tokens=pt.qformer_prompt_tokens,
        vision_encoder=m.vision_encoder,
        language_model=m.language_model,
        projection=m.projection,
        train_projection=m.train_projection,
        num_image_tokens=m.num_image_tokens,
        feature_cache=d.feature_cache,
        cache_dir=cache_dir,
    )


def backbone_from_config(
    config: RunConfig, name_or_path: str | None = None, device: str = "cpu"
) -> Backbone:
    """The config's backbone; QLoRA (`method.lora.quantization_bit`) is checked first, so
    a machine without bitsandbytes support for it stops here with the reason."""
    m, lora = config.model, config.method.lora
    bits = lora.quantization_bit if lora.enabled else None
    if bits:
        from softprompt.tuners.lora.quantization import quantization_support

        problem = quantization_support(bits, device)
        if problem:
            raise ConfigError(problem)
    return load_backbone(
        name_or_path or m.name_or_path,
        m.family,
        m.dtype,
        m.trust_remote_code,
        vision=vision_settings(config),
        quantization_bit=bits,
    )


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
