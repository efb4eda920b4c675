"""Frozen vision encoders for composed models: loading, token grids, pooling, projection.

Kinds: a transformers vision model (CLIP, SigLIP, ViT, ...), `timm:<name>` or
`timm:<name>@/path/weights.safetensors`, and `embedded:effnet-lite0` (weights in a package).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    CLIPVisionModel,
    SiglipVisionModel,
)

from softprompt.backbones.embedded import (
    EFFNET_LITE0_PREPROCESS,
    EMBEDDED_PREFIX,
    load_efficientnet_lite0,
    preprocess_efficientnet_lite0,
)

logger = logging.getLogger("softprompt")


PROJECTIONS = ("linear", "mlp")
PROBE_IMAGES = 4  # synthetic images of the probe forward that sizes and calibrates a model


@dataclass
class VisionEncoder:
    """A frozen image encoder with its input pipeline.

    Attributes:
        module: the encoder (frozen, eval mode).
        preprocess: list of RGB PIL images -> (B, 3, H, W) float pixels.
        forward: pixels -> (B, T, C) tokens or a (B, C, H, W) feature map.
        preprocessing: JSON-able description of `preprocess` (part of the cache key).
    """

    module: nn.Module
    preprocess: Callable[[list[Image.Image]], torch.Tensor]
    forward: Callable[[torch.Tensor], torch.Tensor]
    preprocessing: dict[str, Any]


def load_vision_encoder(
    spec: str, dtype: torch.dtype, trust_remote_code: bool = False
) -> VisionEncoder:
    """Load `embedded:effnet-lite0`, `timm:<name>[@weights]` or a transformers vision model."""
    if spec.startswith(EMBEDDED_PREFIX):
        if spec != "embedded:effnet-lite0":
            raise ValueError(
                f"unknown embedded vision encoder {spec!r}; known: embedded:effnet-lite0"
            )
        model = load_efficientnet_lite0().to(dtype)
        return VisionEncoder(
            model,
            lambda images: torch.cat([preprocess_efficientnet_lite0(im) for im in images]),
            channels_last_forward(model),
            dict(EFFNET_LITE0_PREPROCESS),
        )
    if spec.startswith("timm:"):
        return _load_timm(spec, dtype)
    return _load_transformers(spec, dtype, trust_remote_code)


def _load_timm(spec: str, dtype: torch.dtype) -> VisionEncoder:
    import timm
    from timm.data import create_transform, resolve_data_config
    from timm.models import load_state_dict

    name, _, weights = spec[len("timm:") :].partition("@")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError as err:  # timm's "Unknown model"
        raise ValueError(f"vision encoder {spec!r}: {err}") from None
    if weights:
        state = load_state_dict(weights)
        # num_classes=0 removes the classifier, so a full ImageNet checkpoint's head is dropped.
        heads = model.pretrained_cfg.get("classifier") or ()
        heads = (heads,) if isinstance(heads, str) else tuple(heads)
        state = {k: v for k, v in state.items() if not k.startswith(tuple(h + "." for h in heads))}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{weights} does not fit timm:{name}: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
    else:
        # pretrained=True would download; nothing can be fetched here, so say it loudly.
        logger.warning("%s has no @weights file: the encoder has RANDOM weights", spec)
    config = resolve_data_config({}, model=model)
    transform = create_transform(**config)
    model = model.to(dtype).eval()
    return VisionEncoder(
        model,
        lambda images: torch.stack([transform(im) for im in images]),
        channels_last_forward(model),
        {"timm": config},
    )


def channels_last_forward(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """`model.forward_features`, in channels-last layout when the model is a convnet.

    oneDNN's convolutions are faster in NHWC: EfficientNet-Lite0 on 16 images at 224 px
    took 0.12 instead of 0.20 s in bfloat16 and 0.26 instead of 0.39 s in float32 on the
    2-core CPU. A ViT (one patch convolution) is left as it is.
    """
    if sum(isinstance(m, nn.Conv2d) for m in model.modules()) < 2:
        return model.forward_features
    model.to(memory_format=torch.channels_last)

    def forward(pixels: torch.Tensor) -> torch.Tensor:
        return model.forward_features(pixels.contiguous(memory_format=torch.channels_last))

    return forward


def _load_transformers(spec: str, dtype: torch.dtype, trust_remote_code: bool) -> VisionEncoder:
    try:
        config = AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"vision encoder {spec!r}: not a transformers vision model directory / hub id, "
            f"timm:<name>[@weights] or embedded:effnet-lite0 ({err})"
        ) from None
    # A full CLIP / SigLIP checkpoint also holds a text tower; load only the vision half.
    classes = {"clip": CLIPVisionModel, "clip_vision_model": CLIPVisionModel}
    classes.update(siglip=SiglipVisionModel, siglip_vision_model=SiglipVisionModel)
    cls = classes.get(config.model_type, AutoModel)
    model = cls.from_pretrained(spec, dtype=dtype, trust_remote_code=trust_remote_code).eval()
    processor = AutoImageProcessor.from_pretrained(spec, trust_remote_code=trust_remote_code)
    return VisionEncoder(
        model,
        lambda images: processor(images=images, return_tensors="pt")["pixel_values"],
        lambda pixels: model(pixel_values=pixels).last_hidden_state,
        json.loads(json.dumps(processor.to_dict(), sort_keys=True, default=str)),
    )


def as_tokens(features: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int] | None, bool]:
    """Bring encoder output to tokens and find its spatial grid.

    Args:
        features: (B, C, H, W) feature map or (B, T, C) tokens.

    Returns:
        (B, T, C) tokens, the (h, w) grid of the patch tokens (None if T is no square), and
        whether the first token is a class token (T = 1 + g*g, as in CLIP / ViT).
    """
    if features.ndim == 4:
        h, w = features.shape[-2:]
        return features.flatten(2).transpose(1, 2), (h, w), False
    if features.ndim != 3:
        raise ValueError(
            f"vision encoder output of shape {tuple(features.shape)}: expected 3-D or 4-D"
        )
    t = features.shape[1]
    for skip in (0, 1):
        g = math.isqrt(t - skip)
        if g > 0 and g * g == t - skip:
            return features, (g, g), skip == 1
    return features, None, False


def pool_tokens(
    tokens: torch.Tensor, grid: tuple[int, int] | None, cls_token: bool, n: int
) -> torch.Tensor:
    """Adaptive-average-pool (B, T, C) tokens to (B, n, C).

    A square `n` pools the patch grid to sqrt(n) x sqrt(n) (the class token is dropped: the
    pooled grid covers the whole image, as in LLaVA's patch-only features); otherwise the
    token sequence is pooled in 1-D.
    """
    if cls_token:
        tokens = tokens[:, 1:]
    if n > tokens.shape[1]:
        raise ValueError(f"num_image_tokens={n} exceeds the encoder's {tokens.shape[1]} tokens")
    side = math.isqrt(n)
    if grid is not None and side * side == n:
        b, _, c = tokens.shape
        image = tokens.transpose(1, 2).reshape(b, c, *grid)
        return F.adaptive_avg_pool2d(image, side).flatten(2).transpose(1, 2)
    return F.adaptive_avg_pool1d(tokens.transpose(1, 2), n).transpose(1, 2)


def build_projection(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """`Linear(C, D)`, or `Linear(C, D) -> GELU -> Linear(D, D)` for "mlp"."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    raise ValueError(f"projection {kind!r}: expected one of {', '.join(PROJECTIONS)}")


@torch.no_grad()
def calibrate_projection(projection: nn.Module, features: torch.Tensor, target_rms: float) -> None:
    """Rescale a freshly initialised projection so its output looks like token embeddings.

    Encoder features come in any scale (CLIP's last hidden state has channels in the
    hundreds, BatchNorm'd CNN maps are ~1) while LM embeddings are ~0.02-0.1 per coordinate;
    an image prefix 1000x louder than the text would swamp attention from step one. So,
    layer by layer on probe features (LSUV-style), each Linear's bias is shifted to centre
    its output (removing the offset shared by all images, which carries no information)
    and weight and bias are scaled to a per-coordinate RMS of 1 before the GELU (its curved
    region) and `target_rms` (the LM's token-embedding RMS) at the output.

    Args:
        projection: `build_projection` output, in float32.
        features: (K, N, C) encoder features of probe images.
        target_rms: root-mean-square of the LM's embedding entries.
    """
    h = features.reshape(-1, features.shape[-1]).float()
    layers = [projection] if isinstance(projection, nn.Linear) else list(projection)
    last = max(i for i, m in enumerate(layers) if isinstance(m, nn.Linear))
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Linear):
            out = layer(h)
            mean = out.mean(0)
            rms = (out - mean).pow(2).mean().sqrt().item()
            scale = (target_rms if i == last else 1.0) / rms if rms > 1e-12 else 1.0
            layer.weight.mul_(scale)
            layer.bias.copy_((layer.bias - mean) * scale)
        h = layer(h)


def embedding_rms(embeddings: torch.Tensor, max_rows: int = 8192) -> float:
    """RMS of a (V, D) embedding matrix over (at most `max_rows` evenly spaced) rows."""
    step = max(1, embeddings.shape[0] // max_rows)
    return embeddings.detach()[::step].float().pow(2).mean().sqrt().item()


def weights_fingerprint(module: nn.Module, samples: int = 64) -> str:
    """Cheap identity of a module's weights: names, shapes and a strided sample of values.

    Part of the cache namespace, so re-trained weights saved under the same path never
    read stale disk features. Hashing every byte of a ViT-L would cost seconds.
    """
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().flatten()
        sample = flat[:: max(1, flat.numel() // samples)].float().cpu()
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def probe_images(count: int = PROBE_IMAGES, size: int = 256) -> list[Image.Image]:
    """Deterministic "dead leaves" images: random overlapping discs of random colours.

    The model reproduces natural images' edge, size and contrast statistics, so features of
    these have about the scale of real photos' (EfficientNet-Lite0: 0.72 vs 0.75 RMS, where
    smooth colour fields give 0.47). Uses its own RNG; the global one is untouched.
    """
    rng = random.Random(0)
    images = []
    for _ in range(count):
        image = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(300):
            r = size * 0.3 * rng.random() ** 3 + 1  # many small discs, a few large ones
            x, y = rng.uniform(0, size), rng.uniform(0, size)
            draw.ellipse(
                (x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3))
            )
        images.append(image)
    return images
