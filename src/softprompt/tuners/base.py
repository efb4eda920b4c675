"""What trains: the `Tuner` Protocol, the `TUNERS` registry and the prompt input contract.

A tuner is one method of adapting a frozen backbone (a soft prompt, LoRA, full
fine-tuning, a trainable projection). It owns its parameters, says how fast they learn,
can be switched off without unloading, and saves itself as one adapter directory. The
`TunerSet` (tuner_set.py) holds a run's tuners; nothing else in the engine needs to know
which methods are on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import nn

from softprompt.backbones.prompt_input import PromptInput
from softprompt.registry import Registry

__all__ = ["SAVED_TUNERS", "TUNERS", "PromptInput", "Tuner", "TunerBase", "trainable_parameters"]


@runtime_checkable
class Tuner(Protocol):
    """One adaptation method attached to a loaded backbone.

    Attributes:
        name: the registry / YAML name ("prompt_tuning", "lora", "full", ...).
        adapter: the name of its directory in an adapter bundle ("prompt", "lora", ...).
        learning_rate: its optimizer group's learning rate.
        trainable: whether it trains in this run (a loaded LoRA can stay frozen).
        enabled: whether it acts on the model's outputs now (a hot switch).
        saved_method: the method a bundle's manifest names for its adapter (the
            `SAVED_TUNERS` loader): `name`, unless it saves as another (a prompt bank).
    """

    name: str
    adapter: str
    learning_rate: float
    trainable: bool
    enabled: bool
    saved_method: str

    def modules(self) -> dict[str, nn.Module]:
        """Modules holding this tuner's parameters (wrapped together for DDP)."""
        ...

    def set_enabled(self, enabled: bool) -> None:
        """Switch the tuner on or off without reloading anything."""
        ...

    def save(self, directory: Path, context: dict[str, Any]) -> None:
        """Write this tuner's adapter directory (PEFT's format where PEFT has the method)."""
        ...

    def load(self, directory: Path) -> None:
        """Load weights saved by `save` (or by PEFT) into this tuner."""
        ...


class TunerBase:
    """Defaults of `Tuner`'s members that most methods share."""

    name: str

    @property
    def saved_method(self) -> str:
        return self.name


# name -> factory(config: RunConfig, backbone) -> Tuner | None (None: not enabled)
TUNERS: Registry[Any] = Registry("tuner")
# adapter method in a bundle -> loader(backbone, bundle, adapter) -> a frozen Tuner
SAVED_TUNERS: Registry[Any] = Registry("saved adapter method")


def trainable_parameters(tuner: Tuner) -> list[nn.Parameter]:
    """The parameters of a tuner that receive gradients, without duplicates."""
    seen: dict[int, nn.Parameter] = {}
    for module in tuner.modules().values():
        for param in module.parameters():
            if param.requires_grad:
                seen.setdefault(id(param), param)
    return list(seen.values())
