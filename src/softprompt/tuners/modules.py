"""Small trainable parts a backbone family brings: the composed model's projection and the
InstructBLIP Q-Former prompt.

They are part of the model's architecture (a composed model needs its projection even when
it does not train), so the backbone builds them and saves their state with
`state_for_save`; as tuners they only join the optimizer and DDP. Their tensors are stored
in the bundle beside the prompt (in the prompt's weights file, as prompt directories always
held them) or in `modules.safetensors` when there is no prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from softprompt.config.run import ConfigError
from softprompt.tuners.base import TUNERS, TunerBase


class BackboneModuleTuner(TunerBase):
    """A trainable module the backbone owns (`backbone.trainable_modules()`)."""

    adapter = ""  # saved with the backbone's state, not as an adapter directory of its own

    def __init__(self, name: str, module: nn.Module, learning_rate: float) -> None:
        self.name = name
        self.module = module
        self.learning_rate = learning_rate
        self.trainable = any(p.requires_grad for p in module.parameters())
        self.enabled = True

    def modules(self) -> dict[str, nn.Module]:
        return {self.name: self.module}

    def set_enabled(self, enabled: bool) -> None:
        if not enabled:
            raise ConfigError(
                f"{self.name} is part of the model's architecture and cannot be switched off"
            )

    def save(self, directory: Path, context: dict[str, Any]) -> None:
        """Nothing of its own: the backbone's `state_for_save` carries it."""

    def load(self, directory: Path) -> None:
        """Nothing of its own: the backbone's `load_saved_state` restores it."""


def _module_tuner(name: str):
    def build(config, backbone) -> BackboneModuleTuner | None:
        modules = backbone.trainable_modules()
        if name not in modules:
            return None
        t = config.training
        lr = t.projection_learning_rate or t.learning_rate / 10
        return BackboneModuleTuner(name, modules[name], lr)

    return build


TUNERS.register("projection")(_module_tuner("projection"))
TUNERS.register("qformer_prompt")(_module_tuner("qformer_prompt"))
