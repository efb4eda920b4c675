"""Resolve `model.name_or_path` and `model.family` into a loaded backbone."""

from __future__ import annotations

import importlib
import logging

import torch
from transformers import AutoConfig

from softprompt.backbones.base import BACKBONES, Backbone
from softprompt.backbones.embedded import resolve_embedded
from softprompt.backbones.spec import FAMILIES, family_specs
from softprompt.backbones.vision_base import VisionSettings
from softprompt.config.errors import ConfigError
from softprompt.errors import UserError
from softprompt.tuners.spec import family_method_problem

# Composed VLMs that ship inside packages: name -> (vision encoder, language model).
EMBEDDED_VLMS = {"embedded:effnet-smollm2": ("embedded:effnet-lite0", "embedded:smollm2-135m")}

logger = logging.getLogger("softprompt")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(UserError):
    """The model could not be found or is of an unsupported kind."""


def detect_family(name_or_path: str, trust_remote_code: bool = False) -> str:
    """Pick the backbone family from a checkpoint's config."""
    try:
        cfg = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"model.name_or_path {name_or_path!r}: not a loadable checkpoint "
            f"(a hub id, a directory written by save_pretrained, or an embedded:* name): {err}"
        ) from None
    for spec in family_specs():
        if cfg.model_type in spec.model_types:
            return spec.name
    if getattr(cfg, "is_encoder_decoder", False):
        return "seq2seq"
    if hasattr(cfg, "text_config") and hasattr(cfg, "vision_config"):
        raise ModelLoadError(
            f"model.name_or_path {name_or_path!r} is a {cfg.model_type} vision-language model; "
            "supported: BLIP-2, InstructBLIP, and composed models (model.vision_encoder + "
            "model.language_model)"
        )
    return "causal_lm"


def load_backbone(
    name_or_path: str,
    family: str | None = None,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    vision: VisionSettings | None = None,
    quantization_bit: int | None = None,
) -> Backbone:
    """Load a frozen backbone.

    Args:
        name_or_path: hub id, local save_pretrained directory, or `embedded:<name>`.
        family: registry name; detected from the config when None.
        dtype: "float32", "bfloat16" or "float16".
        vision: options of vision-language families (placement, encoder, projection, cache).
        quantization_bit: 4 or 8 to load the frozen weights through bitsandbytes (QLoRA).
    """
    vision = vision or VisionSettings()
    if name_or_path in EMBEDDED_VLMS:
        encoder, lm = EMBEDDED_VLMS[name_or_path]
        vision.vision_encoder = vision.vision_encoder or encoder
        vision.language_model = vision.language_model or lm
        family, path = "composed", None
    elif vision.vision_encoder is not None and family in (None, "composed"):
        vision.language_model = vision.language_model or name_or_path
        family, path = "composed", None
    else:
        try:
            path = resolve_embedded(name_or_path)
        except ValueError as err:  # an unknown embedded:* name
            raise ModelLoadError(f"model.name_or_path: {err}") from None
        family = family or detect_family(path, trust_remote_code)
    # Importing a family's module registers it; only the one needed is imported.
    spec = FAMILIES.get(family)
    importlib.import_module(spec.module)
    cls = BACKBONES.get(family)
    kwargs = {"display_name": name_or_path, "dtype": DTYPES[dtype]}
    if spec.vision:
        kwargs["settings"] = vision
    if quantization_bit:
        kwargs["quantization_config"] = _quantization(quantization_bit, family, dtype)
    backbone = cls.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    if quantization_bit:
        from softprompt.backbones.quantization import keep_4bit_trainable

        keep_4bit_trainable(backbone.model)
    return backbone


def _quantization(bits: int, family: str, dtype: str):
    """bitsandbytes settings for QLoRA, refusing families it cannot load that way."""
    from softprompt.backbones.quantization import bnb_config

    problem = family_method_problem(family, ["lora"])
    if problem:  # said before bitsandbytes loads a model that could not train anyway
        raise ConfigError(problem)
    if family == "composed":
        raise ModelLoadError(
            "method.lora.quantization_bit: composed models load their parts from several "
            "sources (GGUF, timm) that bitsandbytes cannot quantize; use it with causal_lm, "
            "seq2seq, blip2 or instructblip checkpoints"
        )
    compute = DTYPES[dtype] if dtype != "float16" else torch.float16
    return bnb_config(bits, compute)
