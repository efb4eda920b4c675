"""A vision-language model put together from parts: frozen image encoder -> projection -> LM.

`[soft prompt][image tokens][text]` (or `[image tokens][soft prompt][text]`) goes into a
frozen causal LM. The image tokens are the encoder's token grid (optionally pooled to
`num_image_tokens`), mapped to the LM's width by a small projection that may train with the
prompt. The encoder is frozen and always in eval mode, so its output for an image never
changes: it is computed once and served from a `FeatureCache` afterwards.

Vision encoders: a transformers vision model (CLIP, SigLIP, ViT, ...), `timm:<name>` or
`timm:<name>@/path/weights.safetensors`, and `embedded:effnet-lite0` (weights in a package).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from PIL import Image
from torch import nn

from softprompt.backbones.base import BACKBONES, BackboneBase, EncodeSettings
from softprompt.backbones.causal_lm import CausalLMBackbone
from softprompt.backbones.decoding import GREEDY, Decoding
from softprompt.backbones.embedded import (
    cache_dir,
    resolve_embedded,
)
from softprompt.backbones.feature_cache import FeatureCache, namespace_key
from softprompt.backbones.prompt_input import PromptInput
from softprompt.backbones.vision_base import VisionSettings, prompt_position, text_examples
from softprompt.backbones.vision_encoders import (
    VisionEncoder,
    as_tokens,
    build_projection,
    calibrate_projection,
    embedding_rms,
    load_vision_encoder,
    pool_tokens,
    probe_images,
    weights_fingerprint,
)
from softprompt.data.images import load_image
from softprompt.data.records import VisionExample

logger = logging.getLogger("softprompt")

# Composed models made only of packaged weights: name -> (vision encoder, language model).
PRESETS = {"embedded:effnet-smollm2": ("embedded:effnet-lite0", "embedded:smollm2-135m")}
FEATURE_CACHE_MODES = ("off", "memory", "disk")
ENCODE_BATCH_SIZE = 32  # images per encoder forward on cache misses
# The memory cache holds at most this many bytes of features (a ViT-L/14-336 image is 2.4 MB
# in float32, so a count limit alone could fill the RAM); evicted entries come back from disk.
MEMORY_CACHE_BYTES = 4 * 2**30


class ComposedModel(nn.Module):
    """Container of the three parts, so `.to(device)` moves all of them.

    `train()` leaves the vision encoder in eval mode: BatchNorm running statistics and
    dropout there would make the cached features wrong.
    """

    def __init__(self, vision_encoder: nn.Module, projection: nn.Module, language_model: nn.Module):
        super().__init__()
        self.vision_encoder = vision_encoder
        self.projection = projection
        self.language_model = language_model

    def train(self, mode: bool = True) -> ComposedModel:
        super().train(mode)
        self.vision_encoder.eval()
        return self


@BACKBONES.register("composed")
class ComposedVLMBackbone(BackboneBase):
    """Frozen vision encoder + projection + frozen causal LM (see the module docstring).

    Attributes:
        encoder: the `VisionEncoder`.
        lm: the `CausalLMBackbone` that reads `[prefix][text]`.
        projection: (B, N, C) features -> (B, N, D) prefix.
        cache: `FeatureCache` of pooled encoder outputs (hits / misses for benchmarks).
        num_image_tokens: N, the prefix length.
        feature_dim: C, the encoder's width.
    """

    family = "composed"

    def __init__(
        self,
        encoder: VisionEncoder,
        lm: CausalLMBackbone,
        settings: VisionSettings,
        name_or_path: str,
        vision_encoder_id: str,
    ) -> None:
        prompt_position(settings.placement, 0)  # validates the placement
        if settings.feature_cache not in FEATURE_CACHE_MODES:
            raise ValueError(
                f"feature_cache {settings.feature_cache!r}: expected one of "
                f"{', '.join(FEATURE_CACHE_MODES)}"
            )
        self.encoder = encoder
        self.lm = lm
        self.settings = settings
        self.name_or_path = name_or_path
        self.vision_encoder_id = vision_encoder_id
        self.placement = settings.placement
        self.tokenizer = lm.tokenizer
        encoder.module.requires_grad_(False)
        encoder.module.eval()
        self._pool_to = settings.num_image_tokens

        # One forward on synthetic images: checks the pipeline end to end, gives the token
        # count and width, and calibrates the projection's scale.
        probe = self._encode_images(probe_images())
        self.num_image_tokens, self.feature_dim = probe.shape[1], probe.shape[2]
        self.projection = build_projection(settings.projection, self.feature_dim, lm.hidden_size)
        calibrate_projection(self.projection, probe, embedding_rms(lm.word_embeddings()))
        self.projection.requires_grad_(settings.train_projection)

        namespace = namespace_key(
            encoder=vision_encoder_id,
            weights=weights_fingerprint(encoder.module),
            preprocessing=encoder.preprocessing,
            num_image_tokens=settings.num_image_tokens,
            dtype=str(probe.dtype),
        )
        disk = None
        if settings.feature_cache == "disk":
            disk = settings.cache_dir or cache_dir() / "features"
        item_bytes = probe[0].numel() * probe.element_size()
        self.cache = FeatureCache(
            namespace,
            disk_dir=disk,
            max_items=max(1, MEMORY_CACHE_BYTES // item_bytes),
            enabled=settings.feature_cache != "off",
        )
        self.model = ComposedModel(encoder.module, self.projection, lm.model)

    @classmethod
    def from_pretrained(
        cls,
        path: str | None,
        display_name: str,
        dtype: torch.dtype,
        settings: VisionSettings,
        trust_remote_code: bool = False,
    ) -> ComposedVLMBackbone:
        """Load the encoder named by `settings.vision_encoder` and the LM `settings.language_model`.

        Args:
            path: the language model when `settings.language_model` is unset.
            display_name: what the user configured; a `PRESETS` name fills in both parts.
            dtype: of the encoder and the LM (the projection stays float32: it trains).
            settings: the vision options.
        """
        vision, lm_id = settings.vision_encoder, settings.language_model or path
        if display_name in PRESETS:
            preset = PRESETS[display_name]
            if (vision or preset[0], settings.language_model or preset[1]) != preset:
                raise ValueError(
                    f"{display_name} is {' + '.join(preset)}; the config asks for "
                    f"vision_encoder={vision!r}, language_model={settings.language_model!r}"
                )
            vision, lm_id = preset
        if not vision or not lm_id:
            raise ValueError(
                "a composed model needs model.vision_encoder and model.language_model "
                f"(got {vision!r} and {lm_id!r})"
            )
        encoder = load_vision_encoder(vision, dtype, trust_remote_code)
        lm = CausalLMBackbone.from_pretrained(
            resolve_embedded(lm_id), lm_id, dtype, trust_remote_code=trust_remote_code
        )
        return cls(encoder, lm, settings, display_name, vision)

    @torch.no_grad()
    def _encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        """(B, N, C) pooled encoder tokens of RGB images, on the encoder's device."""
        module = self.encoder.module
        module.eval()  # whatever a caller did to it: cached features need eval-mode outputs
        param = next(module.parameters())
        pixels = self.encoder.preprocess(images).to(param.device, param.dtype)
        tokens, grid, cls_token = as_tokens(self.encoder.forward(pixels))
        if self._pool_to is None:
            return tokens
        return pool_tokens(tokens.float(), grid, cls_token, self._pool_to).to(tokens.dtype)

    def _compute(self, paths: list[str]) -> torch.Tensor:
        out = []
        for start in range(0, len(paths), ENCODE_BATCH_SIZE):
            images = [load_image(p) for p in paths[start : start + ENCODE_BATCH_SIZE]]
            out.append(self._encode_images(images).cpu())
        return torch.cat(out)

    def image_features(self, image_paths: list[str]) -> torch.Tensor:
        """(B, N, C) frozen features on the CPU; the encoder runs only on cache misses."""
        return self.cache.features(
            image_paths, lambda rows: self._compute([image_paths[i] for i in rows])
        )

    def image_prefix(self, image_paths: list[str]) -> torch.Tensor:
        """(B, N, D) projected image tokens, on the projection's device and dtype."""
        weight = next(self.projection.parameters())
        features = self.image_features(image_paths).to(weight.device, weight.dtype)
        return self.projection(features)

    @property
    def hidden_size(self) -> int:
        return self.lm.hidden_size

    def word_embeddings(self) -> torch.Tensor:
        return self.lm.word_embeddings()

    # LoRA and full fine-tuning act on the language model (`BackboneBase`'s defaults):
    # the encoder's output is cached.

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"projection": self.projection} if self.settings.train_projection else {}

    def collate(
        self, examples: list[VisionExample], settings: EncodeSettings, with_targets: bool
    ) -> dict[str, Any]:
        batch: dict[str, Any] = self.lm.collate(text_examples(examples), settings, with_targets)
        batch["image_paths"] = [e.image_path for e in examples]
        return batch

    def _position(self, prefix: torch.Tensor) -> int:
        return prompt_position(self.placement, prefix.shape[1])

    def loss_sum(
        self, batch: dict[str, Any], prompt: PromptInput | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed target-token cross-entropy and the token count."""
        prefix = self.image_prefix(batch["image_paths"])
        return self.lm.loss_sum(
            batch, prompt, prefix=prefix, prompt_position=self._position(prefix)
        )

    def sequence_logprobs(self, batch: dict[str, Any], prompt: PromptInput | None) -> torch.Tensor:
        """(B,) summed log-probability of each row's target tokens."""
        prefix = self.image_prefix(batch["image_paths"])
        return self.lm.sequence_logprobs(
            batch, prompt, prefix=prefix, prompt_position=self._position(prefix)
        )

    @torch.no_grad()
    def generate(
        self,
        batch: dict[str, Any],
        prompt: PromptInput | None,
        max_new_tokens: int,
        decoding: Decoding = GREEDY,
    ) -> list[str]:
        """Continuations (new text only) of left-padded inputs, greedy by default."""
        prefix = self.image_prefix(batch["image_paths"])
        position = self._position(prefix)
        return self.lm.generate(batch, prompt, max_new_tokens, prefix, position, decoding)

    def state_for_save(self) -> dict[str, torch.Tensor]:
        """Projection weights as `projection.<name>` (saved even when frozen: its random
        initialisation is part of what the prompt was trained against)."""
        return {
            f"projection.{k}": v.detach().cpu().contiguous()
            for k, v in self.projection.state_dict().items()
        }

    def load_saved_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load `state_for_save` output; all names and shapes must match exactly.

        Raises:
            ValueError: names missing or unexpected, or a shape differs (nothing is loaded).
        """
        own = {f"projection.{k}": v for k, v in self.projection.state_dict().items()}
        missing, unexpected = sorted(own.keys() - tensors), sorted(tensors.keys() - own.keys())
        if missing or unexpected:
            raise ValueError(
                f"saved state does not fit this {self.settings.projection} projection: "
                f"missing {missing}, unexpected {unexpected}"
            )
        for name, target in own.items():
            if tuple(tensors[name].shape) != tuple(target.shape):
                raise ValueError(
                    f"saved tensor {name} has shape {tuple(tensors[name].shape)}, this model's "
                    f"has {tuple(target.shape)} (different vision encoder, LM or projection?)"
                )
        with torch.no_grad():
            for name, target in own.items():
                target.copy_(tensors[name])

    def describe(self) -> dict[str, Any]:
        """What the prompt was trained against, for the prompt's metadata."""
        return {
            "family": self.family,
            "vision_encoder": self.vision_encoder_id,
            "language_model": self.lm.name_or_path,
            "projection": self.settings.projection,
            "train_projection": self.settings.train_projection,
            "num_image_tokens": self.num_image_tokens,
            "feature_dim": self.feature_dim,
            "hidden_size": self.hidden_size,
            "placement": self.placement,
            "preprocessing": self.encoder.preprocessing,
        }
