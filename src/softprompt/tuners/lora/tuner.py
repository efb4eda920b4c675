"""LoRA as a tuner: peft's `LoraModel` injected into the backbone in place.

The backbone keeps its own modules (only some `nn.Linear`s become peft `lora.Linear`s), so
every code path (the shared prompt prefix, feature caches, generation) runs unchanged with
LoRA inside. Saved files are exactly what `PeftModel.save_pretrained` writes for the model a
PEFT user would wrap (`backbone.peft_model()`): PEFT loads ours and we load PEFT's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, LoraModel, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from safetensors.torch import save_file
from torch import nn

from softprompt.artifacts.peft_files import PeftFileError, read_adapter_weights
from softprompt.config.run import ConfigError
from softprompt.tuners.base import SAVED_TUNERS, TUNERS, TunerBase
from softprompt.tuners.lora.config import LoraSettings

ADAPTER_NAME = "default"
PEFT_KEY_PREFIX = "base_model.model."
WEIGHTS_FILE = "adapter_model.safetensors"
# Our own defaults where peft's table has none (module-name suffixes of attention q/v).
EXTRA_DEFAULT_TARGETS = {"smollm2": ["q_proj", "v_proj"]}


def default_targets(backbone) -> list[str] | str:
    """`target_modules: auto` for a backbone: peft's per-model-type table, scoped to the
    language model inside a vision-language model."""
    model_type = backbone.lm_model_type()
    names = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    names = names or EXTRA_DEFAULT_TARGETS.get(model_type)
    if not names:
        raise ConfigError(
            f"method.lora.target_modules auto: no default for model type {model_type!r}; "
            "list the module names (e.g. [q_proj, v_proj])"
        )
    scope = backbone.lora_scope
    if scope is None:
        return list(names)
    alternatives = "|".join(re.escape(n) for n in names)
    return rf"{re.escape(scope)}\..*\.({alternatives})"


class LoraTuner(TunerBase):
    """LoRA adapters inside `backbone.peft_model()`.

    Args:
        target: the Hugging Face model a PEFT user would wrap (LoRA is injected into it).
        config: the peft `LoraConfig`.
        learning_rate: the LoRA weights' learning rate.
        trainable: False keeps them frozen (a prompt trained on a fixed LoRA).
    """

    name = "lora"
    adapter = "lora"

    def __init__(
        self, target: nn.Module, config: LoraConfig, learning_rate: float, trainable: bool
    ) -> None:
        self.target = target
        self.config = config
        self.learning_rate = learning_rate
        self.trainable = trainable
        self.enabled = True
        try:
            self._lora = LoraModel(target, config, ADAPTER_NAME)  # injects in place
        except ValueError as err:  # e.g. no module matches target_modules
            raise ConfigError(
                f"method.lora.target_modules {config.target_modules!r}: {err}"
            ) from None
        self._layers = nn.ModuleList(
            getattr(m, attr)
            for m in target.modules()
            if isinstance(m, BaseTunerLayer)
            for attr in m.adapter_layer_names
        )
        self._layers.requires_grad_(trainable)

    @classmethod
    def create(cls, settings: LoraSettings, backbone) -> LoraTuner:
        """A new LoRA (B = 0, so the model starts exactly as the base model) or, with
        `settings.path`, a saved one."""
        if settings.path:
            tuner = cls.from_dir(backbone, Path(settings.path), settings.trainable)
            tuner.learning_rate = settings.learning_rate
            return tuner
        targets = settings.target_modules
        if targets == "auto":
            targets = default_targets(backbone)
        config = LoraConfig(
            r=settings.r,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=targets,
            base_model_name_or_path=backbone.peft_base_name(),
            task_type=backbone.peft_task_type(),
        )
        tuner = cls(backbone.peft_model(), config, settings.learning_rate, settings.trainable)
        tuner.check_scope(backbone)
        return tuner

    @classmethod
    def from_dir(cls, backbone, directory: Path, trainable: bool = False) -> LoraTuner:
        """Load a LoRA adapter directory (ours or PEFT's) into `backbone`."""
        config = read_lora_config(directory)
        tuner = cls(backbone.peft_model(), config, learning_rate=0.0, trainable=trainable)
        tuner.check_scope(backbone)
        tuner.load(directory)
        return tuner

    def check_scope(self, backbone) -> None:
        """Refuse LoRA outside the language model of a BLIP-2 / InstructBLIP model: the
        Q-Former's and vision tower's outputs are cached per image, so LoRA there would
        never see a gradient (and would make the cache wrong).

        Raises:
            ConfigError: naming a module outside `backbone.lora_scope`.
        """
        scope = backbone.lora_scope
        if scope is None:
            return
        outside = [
            name
            for name, module in self.target.named_modules()
            if isinstance(module, BaseTunerLayer) and not name.startswith(scope + ".")
        ]
        if outside:
            raise ConfigError(
                f"method.lora.target_modules reaches {outside[0]!r} (and {len(outside) - 1} "
                f"more) outside the language model ({scope}); only language-model modules "
                "can take LoRA here, since the image side's outputs are cached"
            )

    def modules(self) -> dict[str, nn.Module]:
        return {"lora": self._layers}

    def set_enabled(self, enabled: bool) -> None:
        if enabled:
            self._lora.enable_adapter_layers()
        else:
            self._lora.disable_adapter_layers()
        # peft's switches also flip requires_grad; this run decides that, not the switch.
        self._layers.requires_grad_(self.trainable)
        self.enabled = enabled

    def state_dict(self) -> dict[str, torch.Tensor]:
        """LoRA weights under PEFT's saved names (`base_model.model.<module>.lora_A.weight`)."""
        state = get_peft_model_state_dict(self.target, adapter_name=ADAPTER_NAME)
        return {
            PEFT_KEY_PREFIX + k: v.detach().float().cpu().contiguous() for k, v in state.items()
        }

    def save(self, directory: Path, context: dict[str, Any]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.state_dict(), str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        self.config.save_pretrained(str(directory))

    def load(self, directory: Path) -> None:
        """Load LoRA weights saved by us or by `PeftModel.save_pretrained`.

        Raises:
            PeftFileError: the weights do not fit this model's LoRA layers.
        """
        tensors = read_adapter_weights(directory)
        state = {k.removeprefix(PEFT_KEY_PREFIX): v for k, v in tensors.items()}
        result = set_peft_model_state_dict(self.target, state, adapter_name=ADAPTER_NAME)
        unexpected = [k for k in result.unexpected_keys if "lora_" in k]
        missing = [k for k in result.missing_keys if "lora_" in k]
        if unexpected or missing:
            shown = (unexpected or missing)[:3]
            raise PeftFileError(
                f"{directory}: LoRA weights do not fit this model ({len(unexpected)} "
                f"unexpected, {len(missing)} missing, e.g. {shown}); was it trained on "
                "another base model?"
            )

    def merge_into_base(self) -> nn.Module:
        """Fold LoRA into the base weights and remove the adapter layers (for export)."""
        return self._lora.merge_and_unload()


def read_lora_config(directory: Path) -> LoraConfig:
    """The `LoraConfig` of an adapter directory, refusing other adapter types."""
    path = directory / "adapter_config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PeftFileError(f"{path}: not a readable adapter config ({err})") from None
    if not isinstance(raw, dict) or raw.get("peft_type") != "LORA":
        kind = raw.get("peft_type") if isinstance(raw, dict) else None
        raise PeftFileError(f"{directory} holds a {kind} adapter; method.lora needs a LORA one")
    return LoraConfig.from_pretrained(str(directory))


@TUNERS.register("lora")
def build_lora_tuner(config, backbone) -> LoraTuner | None:
    """`method.lora` of a run config, when enabled."""
    settings = config.method.lora
    if not settings.enabled:
        return None
    return LoraTuner.create(settings, backbone)


@SAVED_TUNERS.register("lora")
def load_saved_lora(backbone, bundle, adapter) -> LoraTuner:
    """A bundle's LoRA, injected frozen into `backbone`."""
    return LoraTuner.from_dir(backbone, adapter.path, trainable=False)
