"""A linear probe on a frozen CLIP's image features, as a loadable adapter.

`softprompt linear-probe` fits it with scikit-learn; here it is held as the weights of
the logistic regression, so that softmax(W f + b) is scikit-learn's `predict_proba`
(a two-class model's one row of weights becomes [0; w], the same probabilities). The
adapter directory holds `linear_probe.safetensors` and a manifest with the classes and
the regularisation strength it was fitted with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
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

FORMAT = "softprompt-linear-probe"
WEIGHTS_FILE = "linear_probe.safetensors"


class LinearProbe(nn.Module):
    """Class logits W f + b of image features f, with the classes they are for."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, classes: list[str]) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.float(), requires_grad=False)
        self.bias = nn.Parameter(bias.float(), requires_grad=False)
        self.classes = tuple(classes)

    @classmethod
    def from_sklearn(cls, model, classes: list[str]) -> LinearProbe:
        """The probe of a fitted `LogisticRegression` whose labels index `classes`."""
        coef = np.asarray(model.coef_, dtype=np.float64)
        intercept = np.asarray(model.intercept_, dtype=np.float64)
        if coef.shape[0] == 1:  # binary: p(1) = sigmoid(w f + b) = softmax([0, w f + b])
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.concatenate([np.zeros(1), intercept])
        full_w = np.zeros((len(classes), coef.shape[1]))
        full_b = np.full(len(classes), -1e4)  # classes absent from training never win
        full_w[model.classes_] = coef
        full_b[model.classes_] = intercept
        return cls(torch.from_numpy(full_w), torch.from_numpy(full_b), classes)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return image_features.to(self.weight.dtype) @ self.weight.t() + self.bias


class LinearProbeTuner(TunerBase):
    """A fitted probe attached to a `ClipBackbone` (never trained by gradient steps)."""

    name = adapter = "linear_probe"
    learning_rate = 0.0
    trainable = False

    def __init__(self, backbone: ClipBackbone, probe: LinearProbe, c: float | None) -> None:
        self.backbone, self.probe, self.c = backbone, probe, c
        self.enabled = True
        backbone.use_head(probe)

    def modules(self) -> dict[str, nn.Module]:
        return {"probe": self.probe}

    def set_enabled(self, enabled: bool) -> None:
        self.enabled = enabled
        self.backbone.use_head(self.probe if enabled else None)

    def save(self, directory: Path, context: dict[str, Any]) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_tensors(
            directory / WEIGHTS_FILE, {"weight": self.probe.weight, "bias": self.probe.bias}
        )
        fields = {
            **model_fields(context),
            "method": self.name,
            "classes": list(self.probe.classes),
            "C": self.c,
            "task": context.get("task") or {},
        }
        write_manifest(directory, FORMAT, fields, [WEIGHTS_FILE])

    def load(self, directory: Path) -> None:
        probe = read_probe(Path(directory), self.backbone.feature_dim)
        with torch.no_grad():
            self.probe.weight.copy_(probe.weight)
            self.probe.bias.copy_(probe.bias)


def read_probe(directory: Path, feature_dim: int) -> LinearProbe:
    """The probe saved in `directory`, checked against the model's feature width."""
    meta = read_json_object(directory / META_FILE)
    if meta.get("format") != FORMAT:
        raise PromptLoadError(f"{directory / META_FILE}: not a linear probe ({FORMAT})")
    verify_manifest_files(directory, meta, "linear probe")
    tensors = load_tensors(directory / WEIGHTS_FILE)
    classes = meta.get("classes")
    weight, bias = tensors.get("weight"), tensors.get("bias")
    if weight is None or bias is None or not isinstance(classes, list):
        raise PromptLoadError(f"{directory}: a linear probe needs weight, bias and classes")
    if tuple(weight.shape) != (len(classes), feature_dim) or tuple(bias.shape) != (len(classes),):
        raise PromptLoadError(
            f"{directory / WEIGHTS_FILE}: weight {tuple(weight.shape)} does not fit "
            f"{len(classes)} classes of {feature_dim}-wide image features"
        )
    return LinearProbe(weight, bias, classes)


@TUNERS.register("linear_probe")
def build_linear_probe(config, backbone) -> None:
    """Never built from a run config: `softprompt linear-probe` fits it."""
    return None


@SAVED_TUNERS.register("linear_probe")
def load_saved_linear_probe(backbone, bundle, adapter) -> LinearProbeTuner:
    if not isinstance(backbone, ClipBackbone):
        raise ConfigError(
            f"{adapter.path} is a linear probe on CLIP image features; "
            f"{backbone.name_or_path} is a {backbone.family} model"
        )
    probe = read_probe(Path(adapter.path), backbone.feature_dim)
    meta = read_json_object(Path(adapter.path) / META_FILE)
    return LinearProbeTuner(backbone, probe, meta.get("C"))
