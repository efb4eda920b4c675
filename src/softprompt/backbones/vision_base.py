"""What vision-language backbones share: their settings, prompt placement, batch moves.

A vision-language backbone is a frozen image pipeline that turns each image into a
few embedding vectors in the language model's space (the *prefix*), plus a frozen text
backbone (`CausalLMBackbone` or `Seq2SeqBackbone`) that reads `[prefix][text]`. The soft
prompt is spliced in front of the image (`placement: before_image`, position 0) or
between image and text (`after_image`, position N). Their interface is
`softprompt.backbones.base.VisionLanguageBackbone`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from softprompt.data.records import VisionExample

PLACEMENTS = ("before_image", "after_image")


@dataclass
class VisionSettings:
    """Options of vision-language backbones (from `model.*` and `method.prompt_tuning.*`).

    Attributes:
        placement: soft prompt before the image tokens or after them (before the text).
        qformer_prompt_tokens: InstructBLIP only: learnable tokens put in front of the
            Q-Former's instruction (0 = none). Makes the Q-Former input trainable, so
            only the vision encoder's output is cached.
        vision_encoder: composed only: hub id / directory of a transformers vision model
            (CLIPVisionModel, SiglipVisionModel, ViTModel, ...), `timm:<name>`, or
            `embedded:effnet-lite0`.
        language_model: composed only: causal LM id / directory / `embedded:smollm2-135m`.
        projection: composed only: "linear" or "mlp" (2 layers, GELU).
        train_projection: composed only: whether the projection trains with the prompt.
        num_image_tokens: composed only: pool the encoder's token grid to this many
            tokens (None keeps them all).
        feature_cache: "off", "memory" or "disk".
        cache_dir: directory of the disk cache.
    """

    placement: str = "before_image"
    qformer_prompt_tokens: int = 0
    vision_encoder: str | None = None
    language_model: str | None = None
    projection: str = "mlp"
    train_projection: bool = True
    num_image_tokens: int | None = None
    feature_cache: str = "memory"
    cache_dir: str | None = None


def prompt_position(placement: str, num_prefix_tokens: int) -> int:
    """Index in `[prefix][text]` where the prompt goes."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement {placement!r}: expected one of {', '.join(PLACEMENTS)}")
    return 0 if placement == "before_image" else num_prefix_tokens


def text_examples(examples: list[VisionExample]):
    """The text half of vision examples, for the text backbone's collate."""
    from softprompt.data.records import TextExample

    return [TextExample(id=e.id, input=e.text, target=e.target) for e in examples]


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move tensors to `device`; leave lists (image paths) alone."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
