"""The backbone a config describes: its family, weights, dtype, vision options, QLoRA."""

from __future__ import annotations

from pathlib import Path

from softprompt.backbones.base import Backbone, EncodeSettings
from softprompt.backbones.loading import load_backbone
from softprompt.backbones.vision_base import VisionSettings
from softprompt.config.run import ConfigError, RunConfig


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
        from softprompt.backbones.quantization import quantization_support

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
