"""What reading any of the on-disk formats gives: a `Bundle` of `Adapter`s.

A prompt directory, a bank and a PEFT prefix directory read as one-adapter bundles, so
everything that loads saved adapters handles one shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from softprompt.artifacts.prompt_dir import LoadedPrompt


@dataclass
class Adapter:
    """One adapter of a bundle: where it is, which method wrote it, whether it is on."""

    path: Path
    method: str
    enabled: bool = True


@dataclass
class Bundle:
    """A bundle read from disk (or a prompt directory seen as a one-adapter bundle).

    Attributes:
        directory: the bundle's root.
        meta: the manifest (or the prompt's softprompt.json; {} for a PEFT prompt).
        adapters: adapter name ("prompt", "lora", "full") -> `Adapter`.
        extras: trainable backbone state saved beside the adapters (projection, ...).
        prompt: the prompt adapter as read (read once; its loader takes it from here).
    """

    directory: Path
    meta: dict[str, Any]
    adapters: dict[str, Adapter]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    prompt: LoadedPrompt | None = None

    @property
    def base_model(self) -> str | None:
        """The recorded base model (a PEFT prompt names it in adapter_config.json)."""
        recorded = self.meta.get("base_model")
        return recorded or (self.prompt.base_model if self.prompt is not None else None)

    @property
    def task(self) -> dict[str, Any]:
        """The task record the adapters were trained for ({} when none was saved)."""
        task = self.meta.get("task")
        return task if isinstance(task, dict) else {}
