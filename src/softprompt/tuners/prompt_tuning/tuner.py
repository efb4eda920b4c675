"""The soft prompt as a tuner: `method.prompt_tuning`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from softprompt.tuners.base import SAVED_TUNERS, TUNERS, PromptInput
from softprompt.tuners.prompt_tuning.config import PromptTuningConfig
from softprompt.tuners.prompt_tuning.io import check_compatible, load_prompt, save_prompt
from softprompt.tuners.prompt_tuning.model import SoftPrompt


class PromptTuner:
    """A soft prompt of `num_virtual_tokens` vectors in front of the backbone's input.

    Saved as PEFT's PROMPT_TUNING adapter (see io.py); the backbone's small trainable
    extras (a composed model's projection, an InstructBLIP Q-Former prompt) ride in the
    same weights file, as prompt directories always held them.
    """

    name = "prompt_tuning"
    adapter = "prompt"

    def __init__(
        self, prompt: SoftPrompt, config: PromptTuningConfig, learning_rate: float
    ) -> None:
        self.prompt = prompt
        self.config = config
        self.learning_rate = learning_rate
        self.trainable = True
        self.enabled = True

    @classmethod
    def for_backbone(
        cls, config: PromptTuningConfig, backbone, learning_rate: float, seed: int
    ) -> PromptTuner:
        """A prompt initialised from the backbone's embedding matrix (see `SoftPrompt`)."""
        prompt = SoftPrompt(config.num_virtual_tokens, backbone.hidden_size)
        prompt.initialize(
            config,
            backbone.word_embeddings(),
            backbone.tokenizer,
            generator=torch.Generator().manual_seed(seed),
        )
        device = backbone.word_embeddings().device
        return cls(prompt.to(device), config, learning_rate)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, config: PromptTuningConfig | None = None):
        """A frozen-at-load prompt holding saved (P, D) vectors (eval / predict)."""
        prompt = SoftPrompt(weight.shape[0], weight.shape[1])
        with torch.no_grad():
            prompt.embedding.weight.copy_(weight)
        prompt.requires_grad_(False)
        config = config or PromptTuningConfig(num_virtual_tokens=weight.shape[0])
        tuner = cls(prompt, config, learning_rate=0.0)
        tuner.trainable = False
        return tuner

    @property
    def weight(self) -> torch.Tensor:
        """(P, D) the prompt vectors."""
        return self.prompt.embedding.weight

    def modules(self) -> dict[str, nn.Module]:
        return {"prompt": self.prompt}

    def set_enabled(self, enabled: bool) -> None:
        self.enabled = enabled

    def prompt_input(self, batch_size: int, module: SoftPrompt | None = None) -> PromptInput:
        """The prompt for a batch; `module` is the (DDP-wrapped) copy to read it through."""
        weight = (module or self.prompt).embedding.weight
        return PromptInput.single(weight, batch_size)

    def save(self, directory: Path, context: dict[str, Any]) -> None:
        """PEFT's prompt format plus softprompt.json (see `save_prompt`)."""
        save_prompt(
            directory,
            self.weight,
            family=context["family"],
            base_model=context["base_model"],
            fingerprint_info=context["fingerprint"],
            init_method=self.config.init_method,
            init_text=self.config.init_text,
            placement=context.get("placement", "prepend"),
            task=context.get("task"),
            extra=context.get("extra"),
        )

    def load(self, directory: Path) -> None:
        loaded = load_prompt(directory)
        if tuple(loaded.weight.shape) != tuple(self.weight.shape):
            raise ValueError(
                f"{directory}: prompt of shape {tuple(loaded.weight.shape)}, this run's is "
                f"{tuple(self.weight.shape)} (method.prompt_tuning.num_virtual_tokens?)"
            )
        with torch.no_grad():
            self.weight.copy_(loaded.weight.to(self.weight.device, self.weight.dtype))


@TUNERS.register("prompt_tuning")
def build_prompt_tuner(config, backbone) -> PromptTuner | None:
    """`method.prompt_tuning` of a run config, when enabled."""
    pt = config.method.prompt_tuning
    if not pt.enabled:
        return None
    return PromptTuner.for_backbone(
        pt, backbone, config.training.learning_rate, config.training.seed
    )


@SAVED_TUNERS.register("prompt_tuning")
def load_saved_prompt(backbone, bundle, adapter) -> PromptTuner:
    """A bundle's prompt (already read by `read_bundle`), checked against `backbone`."""
    loaded = bundle.prompt if bundle.prompt is not None else load_prompt(adapter.path)
    check_compatible(loaded, backbone)
    return PromptTuner.from_weight(loaded.weight.to(backbone.word_embeddings().device))
