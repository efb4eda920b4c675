"""The soft prompt as a tuner: `method.prompt_tuning`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from softprompt.artifacts.prompt_dir import (
    ENCODER_FILE,
    check_compatible,
    load_prompt,
    save_prompt,
)
from softprompt.tuners.base import SAVED_TUNERS, PromptInput, TunerBase
from softprompt.tuners.prompt_tuning.config import PromptTuningConfig
from softprompt.tuners.prompt_tuning.model import SoftPrompt
from softprompt.tuners.prompt_tuning.reparam import build_encoder


class PromptTuner(TunerBase):
    """A soft prompt of `num_virtual_tokens` vectors in front of the backbone's input.

    Saved as PEFT's PROMPT_TUNING adapter (see io.py); the backbone's small trainable
    extras (a composed model's projection, an InstructBLIP Q-Former prompt) ride in the
    same weights file, as prompt directories always held them.

    A reparameterised prompt (`reparameterize` mlp / lstm / residual) trains its raw
    embeddings and encoder together; it is saved merged (the encoder's output as plain
    prompt vectors) with the unmerged state beside it, which `load` restores for resume.
    """

    name = "prompt_tuning"
    # What the inference plan reads: one prompt (a `PromptBank` says "tasks" or "ensemble").
    kind = "single"
    names: tuple[str, ...] = ()
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
        """A prompt initialised from the backbone's embedding matrix (see `SoftPrompt`),
        behind the encoder `config.reparameterize` asks for."""
        encoder = build_encoder(config, backbone.hidden_size, seed)
        prompt = SoftPrompt(config.num_virtual_tokens, backbone.hidden_size, encoder)
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
        """(P, D) the embedding parameter: the prompt itself unless reparameterised (the
        encoder's input then; `vectors()` is the prompt)."""
        return self.prompt.embedding.weight

    def vectors(self, module: SoftPrompt | None = None) -> torch.Tensor:
        """(P, D) the prompt the backbone sees, through the encoder when there is one.

        Args:
            module: the (DDP-wrapped) copy to read it through; this tuner's by default.
        """
        return (module or self.prompt).vectors()

    def named_vectors(self, key: str = "prompt_embeddings") -> dict[str, torch.Tensor]:
        """{key: (P, D)} the prompt under its weights-file key (a bank: one per member)."""
        return {key: self.vectors()}

    def modules(self) -> dict[str, nn.Module]:
        """The SoftPrompt, encoder included: everything that trains."""
        return {"prompt": self.prompt}

    def set_enabled(self, enabled: bool) -> None:
        self.enabled = enabled

    def prompt_input(self, batch_size: int, module: SoftPrompt | None = None) -> PromptInput:
        """The prompt for a batch; `module` is the (DDP-wrapped) copy to read it through."""
        return PromptInput.single(self.vectors(module), batch_size)

    def save(self, directory: Path, context: dict[str, Any]) -> None:
        """PEFT's prompt format plus softprompt.json (see `save_prompt`); merged, with
        the encoder's unmerged state beside it when reparameterised."""
        reparameterized = self.prompt.encoder is not None
        save_prompt(
            directory,
            self.prompt.merged(),
            family=context["family"],
            base_model=context["base_model"],
            fingerprint_info=context["fingerprint"],
            init_method=self.config.init_method,
            init_text=self.config.init_text,
            placement=context.get("placement", "prepend"),
            task=context.get("task"),
            extra=context.get("extra"),
            encoder_state=self.prompt.state_dict() if reparameterized else None,
            reparameterize=self.config.reparameterize if reparameterized else "none",
        )

    def load(self, directory: Path) -> None:
        """Load a saved prompt: its unmerged state into a reparameterised prompt (exact
        resume), its merged vectors into a plain one.

        Raises:
            ValueError: the shapes differ, or this prompt has an encoder and the directory
                holds none (or another kind).
        """
        loaded = load_prompt(directory)
        if tuple(loaded.weight.shape) != tuple(self.weight.shape):
            raise ValueError(
                f"{directory}: prompt of shape {tuple(loaded.weight.shape)}, this run's is "
                f"{tuple(self.weight.shape)} (method.prompt_tuning.num_virtual_tokens?)"
            )
        if self.prompt.encoder is not None:
            self._load_unmerged(directory, loaded.encoder_state)
            return
        with torch.no_grad():
            self.weight.copy_(loaded.weight.to(self.weight.device, self.weight.dtype))

    def _load_unmerged(self, directory: Path, state: dict[str, torch.Tensor] | None) -> None:
        kind = self.config.reparameterize
        if state is None:
            raise ValueError(
                f"{directory} holds a plain prompt (no {ENCODER_FILE}); this run trains it "
                f"through an encoder (method.prompt_tuning.reparameterize={kind}), which "
                "cannot be recovered from merged vectors: use reparameterize=none with it"
            )
        try:
            self.prompt.load_state_dict(state)
        except RuntimeError as err:
            detail = " ".join(line.strip() for line in str(err).splitlines()[1:])[:400]
            raise ValueError(
                f"{directory / ENCODER_FILE} does not fit this run's encoder "
                f"(method.prompt_tuning.reparameterize={kind}, reparameterize_hidden_size="
                f"{self.config.reparameterize_hidden_size}): {detail}"
            ) from None


@SAVED_TUNERS.register("prompt_tuning")
def load_saved_prompt(backbone, bundle, adapter) -> PromptTuner:
    """A bundle's prompt (already read by `read_bundle`), checked against `backbone`."""
    loaded = bundle.prompt if bundle.prompt is not None else load_prompt(adapter.path)
    check_compatible(loaded, backbone)
    return PromptTuner.from_weight(loaded.weight.to(backbone.word_embeddings().device))
