"""CoCoOp: CoOp's shared context plus the meta-net's image-conditioned token."""

from __future__ import annotations

from softprompt.tuners.base import SAVED_TUNERS, TUNERS
from softprompt.tuners.coop.tuner import (
    ClassPromptTuner,
    build_learner,
    clip_backbone,
    load_saved,
    meta_net,
)


@TUNERS.register("cocoop")
def build_cocoop(config, backbone) -> ClassPromptTuner | None:
    """`method.cocoop` of a run config, when enabled (the meta-net starts as PyTorch's
    default initialisation, as CoCoOp's does)."""
    section = config.method.cocoop
    if not section.enabled:
        return None
    clip = clip_backbone(backbone, "cocoop")
    settings = {**section.model_dump(include={"n_ctx", "ctx_init"}), "class_specific": False,
                "class_token_position": "end"}  # fmt: skip
    learner = build_learner(clip, settings, clip.bound.class_texts)
    net = meta_net(clip.feature_dim, clip.hidden_size).to(learner.ctx.dtype)
    return ClassPromptTuner("cocoop", clip, learner, settings, section.learning_rate, net)


@SAVED_TUNERS.register("cocoop")
def load_saved_cocoop(backbone, bundle, adapter) -> ClassPromptTuner:
    return load_saved(backbone, adapter, "cocoop", with_net=True)
