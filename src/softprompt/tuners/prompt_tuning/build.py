"""The `prompt_tuning` tuner a run config asks for: one prompt, or a bank of them."""

from __future__ import annotations

from softprompt.tuners.base import TUNERS
from softprompt.tuners.prompt_tuning.bank import PromptBank, build_bank
from softprompt.tuners.prompt_tuning.tuner import PromptTuner


@TUNERS.register("prompt_tuning")
def build_prompt_tuner(config, backbone) -> PromptTuner | PromptBank | None:
    """`method.prompt_tuning` of a run config, when enabled."""
    pt = config.method.prompt_tuning
    if not pt.enabled:
        return None
    if config.tasks or pt.ensemble > 1:
        return build_bank(config, backbone)
    return PromptTuner.for_backbone(
        pt, backbone, config.training.learning_rate, config.training.seed
    )
