"""Resolve `model.name_or_path` and `model.family` into a loaded backbone."""

from __future__ import annotations

import logging

import torch
from transformers import AutoConfig

from softprompt.backbones.base import BACKBONES, Backbone
from softprompt.backbones.embedded import resolve_embedded

logger = logging.getLogger("softprompt")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(ValueError):
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
    if getattr(cfg, "is_encoder_decoder", False):
        return "seq2seq"
    archs = " ".join(getattr(cfg, "architectures", None) or [])
    if "ForConditionalGeneration" in archs and hasattr(cfg, "text_config"):
        raise ModelLoadError(
            f"model.name_or_path {name_or_path!r} is a {cfg.model_type} vision-language model; "
            "this build supports the text families causal_lm and seq2seq"
        )
    return "causal_lm"


def load_backbone(
    name_or_path: str,
    family: str | None = None,
    dtype: str = "float32",
    trust_remote_code: bool = False,
) -> Backbone:
    """Load a frozen backbone.

    Args:
        name_or_path: hub id, local save_pretrained directory, or `embedded:<name>`.
        family: registry name; detected from the config when None.
        dtype: "float32", "bfloat16" or "float16".
    """
    # Importing the family modules registers them.
    from softprompt.backbones import causal_lm, seq2seq  # noqa: F401

    path = resolve_embedded(name_or_path)
    family = family or detect_family(path, trust_remote_code)
    cls = BACKBONES.get(family)
    return cls.from_pretrained(
        path, display_name=name_or_path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
    )
