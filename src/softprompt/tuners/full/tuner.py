"""Full fine-tuning as a tuner: every weight of the language model trains.

For vision-language backbones the image side (encoder, Q-Former) stays frozen: its outputs
are cached per image, which is what makes these models cheap to tune at all. The adapter
directory is the tuned model as `save_pretrained` writes it, so `from_pretrained` loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from softprompt.artifacts.peft_files import PeftFileError
from softprompt.backbones.base import Backbone
from softprompt.config.run import ConfigError
from softprompt.tuners.base import SAVED_TUNERS, TUNERS, TunerBase


class FullTuner(TunerBase):
    """Unfreezes the language model (`language_model(backbone)`) and trains all of it."""

    name = "full"
    adapter = "full"

    def __init__(self, target: nn.Module, learning_rate: float) -> None:
        self.target = target
        self.learning_rate = learning_rate
        self.trainable = True
        self.enabled = True
        target.requires_grad_(True)

    def modules(self) -> dict[str, nn.Module]:
        return {"full": self.target}

    def set_enabled(self, enabled: bool) -> None:
        if not enabled:
            raise ConfigError(
                "full fine-tuning changed the model itself; it cannot be switched off"
            )

    def save(self, directory: Path, context: dict[str, Any]) -> None:
        self.target.save_pretrained(str(directory), safe_serialization=True)

    def load(self, directory: Path) -> None:
        """Load weights written by `save` (one or several safetensors shards)."""
        shards = sorted(Path(directory).glob("model*.safetensors"))
        if not shards:
            raise PeftFileError(f"{directory}: no model*.safetensors (a full fine-tune)")
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            try:
                state.update(load_file(str(shard)))
            except SafetensorError as err:
                raise PeftFileError(f"{shard}: unreadable ({err})") from None
        # Tied weights (lm_head = embeddings) are saved once; strict=False lets them be.
        result = self.target.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise PeftFileError(
                f"{directory}: weights do not fit this model (e.g. {result.unexpected_keys[:3]})"
            )


@TUNERS.register("full")
def build_full_tuner(config, backbone) -> FullTuner | None:
    """`method.full` of a run config, when enabled."""
    settings = config.method.full
    if not settings.enabled:
        return None
    return FullTuner(language_model(backbone), settings.learning_rate)


def language_model(backbone: Backbone) -> nn.Module:
    """The Hugging Face language model of a text backbone or of a VLM's text half."""
    return backbone.lm.model


@SAVED_TUNERS.register("full")
def load_saved_full(backbone, bundle, adapter) -> FullTuner:
    """A bundle's full fine-tune loaded into `backbone`'s language model, frozen."""
    tuner = FullTuner(language_model(backbone), learning_rate=0.0)
    tuner.load(adapter.path)
    tuner.target.requires_grad_(False)
    tuner.trainable = False
    return tuner
