"""CoOp and CoCoOp as tuners: learned class prompts attached to a frozen CLIP or SigLIP.

The tuner attaches itself to the backbone (`ClipBackbone.use_class_prompts`), as LoRA
puts its layers into the model: the backbone's scores then read the learned prompts, and
switching the tuner off scores by the zero-shot templates again. CoCoOp is the same
learner plus a meta-net whose output is added to every context vector, per image.

An adapter directory holds `class_prompt.safetensors` (the context, and the meta-net's
weights for CoCoOp) and a `softprompt.json` manifest: the base model's family and
fingerprint, the settings that rebuild the learner, the training classes, and checksums.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from softprompt.artifacts.manifest import (
    META_FILE,
    PromptLoadError,
    load_tensors,
    model_fields,
    read_json_object,
    save_tensors,
    verify_manifest_files,
    write_manifest,
)
from softprompt.backbones.clip import ClipBackbone
from softprompt.config.run import ConfigError
from softprompt.tuners.base import SAVED_TUNERS, TUNERS, TunerBase
from softprompt.tuners.class_prompts import ClassPromptLearner

FORMAT = "softprompt-class-prompt"
WEIGHTS_FILE = "class_prompt.safetensors"
LEARNER_KEYS = ("n_ctx", "ctx_init", "class_specific", "class_token_position")


def meta_net(feature_dim: int, hidden_size: int) -> nn.Sequential:
    """CoCoOp's meta-net: Linear(E, E/16) - ReLU - Linear(E/16, D), named as CoCoOp's."""
    middle = max(1, feature_dim // 16)
    return nn.Sequential(
        OrderedDict(
            linear1=nn.Linear(feature_dim, middle),
            relu=nn.ReLU(inplace=True),
            linear2=nn.Linear(middle, hidden_size),
        )
    )


class ClassPromptTuner(TunerBase):
    """A class-prompt learner (and CoCoOp's meta-net) on a `ClipBackbone`.

    Args:
        name: "coop" or "cocoop" (also its adapter directory).
        settings: the learner's settings as saved (`LEARNER_KEYS`).
    """

    def __init__(
        self,
        name: str,
        backbone: ClipBackbone,
        learner: ClassPromptLearner,
        settings: dict[str, Any],
        learning_rate: float,
        net: nn.Module | None = None,
    ) -> None:
        self.name = self.adapter = name
        self.backbone, self.learner, self.net = backbone, learner, net
        self.settings = settings
        self.learning_rate = learning_rate
        self.trainable = True
        self.enabled = True
        backbone.use_class_prompts(self)

    def modules(self) -> dict[str, nn.Module]:
        return {"ctx": self.learner} | ({"meta_net": self.net} if self.net is not None else {})

    def set_enabled(self, enabled: bool) -> None:
        self.enabled = enabled
        self.backbone.use_class_prompts(self if enabled else None)

    def class_text_features(
        self, model, names: tuple[str, ...], image_features: torch.Tensor
    ) -> torch.Tensor:
        """(C, E) CoOp's class features; CoCoOp's are (U, C, E), one set per image."""
        if self.net is None:
            return self.learner.text_features(model, names=names)
        weight = next(self.net.parameters())
        unit = image_features / image_features.norm(dim=-1, keepdim=True)
        shift = self.net(unit.to(weight.device, weight.dtype))
        return self.learner.text_features(model, shift.to(self.learner.ctx.dtype), names)

    def tensors(self) -> dict[str, torch.Tensor]:
        own = {"ctx": self.learner.ctx}
        if self.net is not None:
            own.update({f"meta_net.{k}": v for k, v in self.net.state_dict().items()})
        return own

    def save(self, directory: Path, context: dict[str, Any]) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_tensors(directory / WEIGHTS_FILE, self.tensors())
        fields = {
            **model_fields(context),
            "method": self.name,
            "settings": self.settings,
            "classes": list(self.learner.classnames),
            "task": context.get("task") or {},
        }
        write_manifest(directory, FORMAT, fields, [WEIGHTS_FILE])

    def load(self, directory: Path) -> None:
        """Load weights written by `save` (shapes checked, nothing loaded on a mismatch)."""
        tensors = read_weights(Path(directory))
        own = self.tensors()
        if sorted(tensors) != sorted(own):
            raise PromptLoadError(
                f"{directory / WEIGHTS_FILE}: holds {sorted(tensors)}, a {self.name} adapter "
                f"holds {sorted(own)}"
            )
        for key, target in own.items():
            if tuple(tensors[key].shape) != tuple(target.shape):
                raise PromptLoadError(
                    f"{directory / WEIGHTS_FILE}: {key} has shape {tuple(tensors[key].shape)}, "
                    f"this model's is {tuple(target.shape)} (another CLIP, or other settings?)"
                )
        with torch.no_grad():
            for key, target in own.items():
                target.copy_(tensors[key])


def read_manifest(directory: Path) -> dict[str, Any]:
    meta = read_json_object(directory / META_FILE)
    if meta.get("format") != FORMAT:
        raise PromptLoadError(f"{directory / META_FILE}: not a class-prompt adapter ({FORMAT})")
    verify_manifest_files(directory, meta, "class-prompt adapter")
    return meta


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    read_manifest(directory)
    return load_tensors(directory / WEIGHTS_FILE)


def clip_backbone(backbone, method: str) -> ClipBackbone:
    """The backbone as a `ClipBackbone`, bound to a task with classes.

    Raises:
        ConfigError: another family, or no classes bound.
    """
    if not isinstance(backbone, ClipBackbone):
        raise ConfigError(
            f"method.{method} learns CLIP class prompts; {backbone.name_or_path} is a "
            f"{backbone.family} model"
        )
    if not backbone.bound.class_texts:
        raise ConfigError(f"method.{method} needs task.type classify with classes")
    return backbone


def build_learner(backbone: ClipBackbone, settings: dict[str, Any], classes) -> ClassPromptLearner:
    """A learner from saved or configured settings (CoCoOp's are never class-specific)."""
    try:
        return ClassPromptLearner(
            backbone.model,
            backbone.tokenizer,
            list(classes),
            n_ctx=settings["n_ctx"],
            ctx_init=settings["ctx_init"],
            class_specific=settings.get("class_specific", False),
            position=settings.get("class_token_position", "end"),
            pad_to=backbone.pad_length(),
        )
    except ValueError as err:
        raise ConfigError(f"method: {err}") from None


@TUNERS.register("coop")
def build_coop(config, backbone) -> ClassPromptTuner | None:
    """`method.coop` of a run config, when enabled."""
    section = config.method.coop
    if not section.enabled:
        return None
    clip = clip_backbone(backbone, "coop")
    settings = section.model_dump(include=set(LEARNER_KEYS))
    learner = build_learner(clip, settings, clip.bound.class_texts)
    return ClassPromptTuner("coop", clip, learner, settings, section.learning_rate)


def load_saved(backbone, adapter, name: str, with_net: bool) -> ClassPromptTuner:
    """A saved class-prompt adapter on `backbone`, frozen."""
    if not isinstance(backbone, ClipBackbone):
        raise PromptLoadError(
            f"{adapter.path} holds CLIP class prompts; {backbone.name_or_path} is a "
            f"{backbone.family} model"
        )
    meta = read_manifest(Path(adapter.path))
    settings = meta.get("settings")
    if not isinstance(settings, dict) or not {"n_ctx", "ctx_init"} <= settings.keys():
        raise PromptLoadError(f"{adapter.path / META_FILE}: no learner settings")
    learner = build_learner(backbone, settings, meta.get("classes") or [])
    net = meta_net(backbone.feature_dim, backbone.hidden_size) if with_net else None
    tuner = ClassPromptTuner(name, backbone, learner, settings, 0.0, net)
    tuner.load(Path(adapter.path))
    for module in tuner.modules().values():
        module.requires_grad_(False)
    tuner.trainable = False
    return tuner


@SAVED_TUNERS.register("coop")
def load_saved_coop(backbone, bundle, adapter) -> ClassPromptTuner:
    return load_saved(backbone, adapter, "coop", with_net=False)
