"""The capability Protocols backbones implement, their defaults, and the family registry.

Small Protocols, one per capability (as torchtune's `recipe_interfaces.py`), rather than
one wide interface or an inheritance tower:

- `FrozenModel`: what every backbone has: the frozen model, its tokenizer and
  embeddings, collation, the loss, option scores and generation with a soft prompt in place.
- `PeftHost`: where PEFT's layers go (LoRA, full fine-tuning, prefix tuning).
- `TrainableState`: trainable parts the backbone itself owns (a composed model's
  projection, an InstructBLIP Q-Former prompt), saved beside the adapters.
- `Backbone`: all of them together, plus `lm` and `describe`: what every registered
  family is, since every family class inherits `BackboneBase`'s defaults.
- `TextBackbone`, `VisionLanguageBackbone`: what only text or only image backbones add.

Callers use these members directly: no family needs probing with getattr/hasattr.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from softprompt.backbones.decoding import GREEDY, Decoding
from softprompt.backbones.prompt_cache import PromptKVCache
from softprompt.backbones.prompt_input import PromptInput
from softprompt.registry import Registry


@dataclass
class EncodeSettings:
    """How examples become token ids (from `data.*` and `task.*`)."""

    max_input_length: int = 512
    max_target_length: int = 128


@runtime_checkable
class FrozenModel(Protocol):
    """A frozen model that soft prompts can be put in front of.

    Prompts arrive as a `PromptInput` (see `softprompt.backbones.splice`, which also reads
    a (B, P, D) tensor as per-row prompts), or None for the model alone.

    Attributes:
        family: registry name ("causal_lm", "seq2seq", ...).
        name_or_path: what the user pointed at (hub id, directory, embedded name).
        model: the whole module (frozen parts + trainable extras), for .to()/.train().
        tokenizer: the language model's tokenizer.
    """

    family: str
    name_or_path: str
    model: nn.Module
    tokenizer: Any

    @property
    def hidden_size(self) -> int:
        """Width of the language model's embeddings (the soft prompt's D)."""
        ...

    def word_embeddings(self) -> torch.Tensor:
        """The language model's input embedding matrix (V, D)."""
        ...

    def collate(
        self, examples: list[Any], settings: EncodeSettings, with_targets: bool
    ) -> dict[str, Any]:
        """Tokenize and pad a batch (right-padded for training, left for generation);
        image backbones add `image_paths`."""
        ...

    def loss_sum(
        self, batch: dict[str, Any], prompt: PromptInput | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed cross-entropy over label tokens and the number of label tokens."""
        ...

    def sequence_logprobs(self, batch: dict[str, Any], prompt: PromptInput | None) -> torch.Tensor:
        """(B,) summed log-probability of each row's label tokens (option scoring)."""
        ...

    def generate(
        self,
        batch: dict[str, Any],
        prompt: PromptInput | None,
        max_new_tokens: int,
        decoding: Decoding = GREEDY,
    ) -> list[str]:
        """Generation with the prompt in place (greedy unless `decoding` samples);
        returns the new text only."""
        ...

    @property
    def prompt_cache(self) -> PromptKVCache | None:
        """The prompt key/value cache generation reuses (None: the model has none,
        e.g. seq2seq; see `softprompt.backbones.prompt_cache`)."""
        ...


@runtime_checkable
class PeftHost(Protocol):
    """Where PEFT's layers go.

    Attributes:
        lora_scope: the submodule of `peft_model()` LoRA may reach ("language_model"),
            or None for all of it.
    """

    lora_scope: str | None

    def peft_model(self) -> nn.Module:
        """The Hugging Face model a PEFT user would wrap (LoRA is injected into it)."""
        ...

    def peft_base_name(self) -> str:
        """`base_model_name_or_path` of the adapters' PEFT configs."""
        ...

    def peft_task_type(self) -> str:
        """PEFT's task type: "CAUSAL_LM" or "SEQ_2_SEQ_LM"."""
        ...

    def lm_model_type(self) -> str:
        """`config.model_type` of the language model (PEFT's default-targets key)."""
        ...


@runtime_checkable
class TrainableState(Protocol):
    """Trainable parts the backbone owns, saved with the prompt or the bundle."""

    def trainable_modules(self) -> dict[str, nn.Module]:
        """Trainable parts besides the tuners, by name ({} for none)."""
        ...

    def state_for_save(self) -> dict[str, torch.Tensor]:
        """Their tensors as they are stored beside the adapters ({} for none)."""
        ...

    def load_saved_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load what `state_for_save` returned.

        Raises:
            ValueError: the tensors do not fit this backbone.
        """
        ...


@runtime_checkable
class Backbone(FrozenModel, PeftHost, TrainableState, Protocol):
    """What every registered family is: each capability at once."""

    @property
    def lm(self) -> TextBackbone:
        """The text backbone that reads the input (the backbone itself for text models)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What a saved prompt records about the backbone it was trained on."""
        ...

    def bind_task(self, task: Any) -> None:
        """Use `task` (its classes) for losses that need every class at once."""
        ...


@runtime_checkable
class TextBackbone(Backbone, Protocol):
    """A causal or seq2seq language model.

    Attributes:
        labels_in_input: causal LMs read their labels as part of the input sequence;
            seq2seq models feed them to the decoder.
    """

    labels_in_input: bool


@runtime_checkable
class VisionLanguageBackbone(Backbone, Protocol):
    """An image pipeline in front of a text backbone (`lm`) that reads `[prefix][text]`.

    Attributes:
        placement: "before_image" or "after_image": where the soft prompt goes.
    """

    placement: str


class BackboneBase:
    """Defaults of `Backbone`'s members, so every family has every member.

    A family holds `family`, `name_or_path`, `model`, `tokenizer` and `lm`, and
    implements `FrozenModel`'s methods; by default PEFT wraps the language model and the
    backbone owns no trainable state.
    """

    family: str = ""
    name_or_path: str
    model: nn.Module
    tokenizer: Any
    lm: Any  # a TextBackbone; text backbones are their own

    lora_scope: str | None = None

    def peft_model(self) -> nn.Module:
        return self.lm.model

    @property
    def prompt_cache(self) -> PromptKVCache | None:
        return self.lm.prompt_kv

    def peft_base_name(self) -> str:
        return self.lm.name_or_path

    def peft_task_type(self) -> str:
        return "CAUSAL_LM" if self.lm.labels_in_input else "SEQ_2_SEQ_LM"

    def lm_model_type(self) -> str:
        return self.lm.model.config.model_type

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {}

    def state_for_save(self) -> dict[str, torch.Tensor]:
        return {}

    def load_saved_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Nothing to load; saved tensors mean the prompt was trained on another kind
        of model (one with a projection or a Q-Former prompt).

        Raises:
            ValueError: `tensors` is not empty.
        """
        if tensors:
            raise ValueError(
                f"saved state {sorted(tensors)[:3]} does not fit this {self.family} "
                "backbone: it has no trainable parts of its own"
            )

    def bind_task(self, task: Any) -> None:
        """Nothing to do: the task reaches a generative model through its inputs. A family
        that scores an input against every class's text (CLIP) reads the class words here;
        training, evaluation and `LoadedModel` bind the task before using the model."""

    def describe(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "model": self.name_or_path,
            "hidden_size": self.lm.hidden_size,
        }


BACKBONES: Registry[type] = Registry("backbone family")


def freeze(model: nn.Module) -> nn.Module:
    """Freeze every parameter: the backbone never trains in prompt tuning."""
    for param in model.parameters():
        param.requires_grad_(False)
    return model
