"""The tuners of one run or one loaded model, and everything done to them together."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from softprompt.artifacts.bundle import Bundle, write_bundle
from softprompt.backbones.base import Backbone
from softprompt.config.run import ConfigError
from softprompt.tuners.base import (
    SAVED_TUNERS,
    TUNERS,
    PromptInput,
    Tuner,
    trainable_parameters,
)
from softprompt.tuners.spec import tuner_specs

logger = logging.getLogger("softprompt")

# Every table below is derived from the methods' specs (tuners/*/spec.py).
# Build order; also the optimizer's group order, which checkpoints of prompt-only runs
# (prompt first, then the backbone's extras) rely on.
TUNER_ORDER = tuple(spec.name for spec in tuner_specs())
# The modules that register the builders and saved-adapter loaders, imported on first use.
TUNER_MODULES = tuple(dict.fromkeys(spec.module for spec in tuner_specs()))
# Adapter names users switch on and off (CLI flags, config), and the methods behind them.
ADAPTER_ALIASES = {name: spec.adapter for spec in tuner_specs() for name in spec.switch_names}


def register_tuners() -> None:
    """Import every method's module (each registers itself in TUNERS and SAVED_TUNERS).

    Raises:
        RuntimeError: a module did not register what its method's spec says it holds.
    """
    for name in TUNER_MODULES:
        importlib.import_module(name)
    for spec in tuner_specs():
        missing = [] if spec.name in TUNERS else [f"the builder {spec.name!r}"]
        missing += [f"the loader {n!r}" for n in spec.saved if n not in SAVED_TUNERS]
        if missing:
            raise RuntimeError(f"{spec.module} does not register {', '.join(missing)}")


class TunerSet:
    """A backbone's tuners: optimizer groups, DDP modules, switches, counting, save/load.

    Args:
        tuners: in `TUNER_ORDER`.
        backbone: the backbone they act on (its extras are saved with them).
    """

    def __init__(self, tuners: list[Tuner], backbone: Backbone) -> None:
        self.tuners = tuners
        self.backbone = backbone

    @classmethod
    def from_config(cls, config, backbone) -> TunerSet:
        """Every tuner the config enables, built on `backbone` (in `TUNER_ORDER`)."""
        register_tuners()
        built = [TUNERS.get(name)(config, backbone) for name in TUNER_ORDER]
        return cls([t for t in built if t is not None], backbone)

    def get(self, name: str) -> Tuner | None:
        """A tuner by registry name ("lora") or adapter name ("prompt")."""
        return next((t for t in self.tuners if name in (t.name, t.adapter)), None)

    @property
    def prompt(self):
        return self.get("prompt_tuning")

    def trainable(self) -> list[Tuner]:
        return [t for t in self.tuners if t.trainable and trainable_parameters(t)]

    def trainable_modules(self) -> dict[str, nn.Module]:
        """Modules of the trainable tuners by unique name (wrapped together for DDP)."""
        return {f"{t.name}__{k}": m for t in self.trainable() for k, m in t.modules().items()}

    def param_groups(self) -> list[dict[str, Any]]:
        """One optimizer group per trainable tuner, with its own learning rate."""
        return [
            {"params": trainable_parameters(t), "lr": t.learning_rate, "name": t.name}
            for t in self.trainable()
        ]

    def prompt_input(self, batch_size: int, ids: torch.Tensor | None = None) -> PromptInput | None:
        """The batch's soft prompts, or None when there is no prompt or it is off.

        Args:
            ids: (B,) each row's prompt in a bank (None: the bank's active prompt, or
                the one prompt).
        """
        prompt = self.prompt
        if prompt is None or not prompt.enabled:
            return None
        if ids is None:
            return prompt.prompt_input(batch_size)
        return prompt.prompt_input(batch_size, ids=ids)

    def set_enabled(self, adapter: str, enabled: bool) -> None:
        """Hot switch: an adapter acts on outputs or not; nothing is reloaded.

        Raises:
            ConfigError: no such adapter in this model.
        """
        tuner = self.get(ADAPTER_ALIASES.get(adapter, adapter))
        if tuner is None:
            have = ", ".join(t.adapter for t in self.tuners if t.adapter) or "none"
            raise ConfigError(f"no adapter {adapter!r} to switch (this model has: {have})")
        tuner.set_enabled(enabled)

    def states(self) -> dict[str, bool]:
        """Adapter name -> on/off."""
        return {t.adapter: t.enabled for t in self.tuners if t.adapter}

    def count_parameters(self) -> tuple[dict[str, int], int, int]:
        """(trainable parameters per tuner, trainable overall, total of backbone + tuners)."""
        per_tuner = {t.name: sum(p.numel() for p in trainable_parameters(t)) for t in self.tuners}
        params = {id(p): p for p in self.backbone.model.parameters()}
        for tuner in self.tuners:
            for module in tuner.modules().values():
                params.update({id(p): p for p in module.parameters()})
        total = sum(p.numel() for p in params.values())
        trainable = sum(p.numel() for p in params.values() if p.requires_grad)
        return per_tuner, trainable, total

    def log_counts(self) -> None:
        """The lines users look for to confirm what trains."""
        per_tuner, trainable, total = self.count_parameters()
        if "prompt_tuning" in per_tuner:
            logger.info("Prompt parameters found: %s", f"{per_tuner['prompt_tuning']:,}")
        for name, count in per_tuner.items():
            if name != "prompt_tuning":
                logger.info("%s parameters: %s", name, f"{count:,}")
        logger.info(
            "Total trainable parameters: %s / %s (%.4f%%)",
            f"{trainable:,}",
            f"{total:,}",
            100.0 * trainable / max(total, 1),
        )

    def to(self, device: torch.device | str) -> TunerSet:
        for tuner in self.tuners:
            for module in tuner.modules().values():
                module.to(device)
        return self

    def save(self, directory: Path, context: dict[str, Any]) -> None:
        """Write the adapter bundle (a plain prompt directory for a prompt-only run)."""
        write_bundle(Path(directory), self.tuners, context, self.backbone.state_for_save())

    def load(self, bundle: Bundle) -> None:
        """Load saved weights into this set's tuners (resume, `best/` for the test split).

        Raises:
            ValueError: the bundle lacks an adapter this set has.
        """
        for tuner in self.tuners:
            if not tuner.adapter:
                continue
            adapter = bundle.adapters.get(tuner.adapter)
            if adapter is None:
                raise ValueError(f"{bundle.directory} has no {tuner.adapter!r} adapter")
            tuner.load(adapter.path)
        if bundle.extras:
            self.backbone.load_saved_state(bundle.extras)
