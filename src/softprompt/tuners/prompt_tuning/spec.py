"""The registration of soft prompt tuning (one prompt, or a bank of them)."""

from __future__ import annotations

from softprompt.tuners.prompt_tuning.config import PromptTuningConfig
from softprompt.tuners.spec import ComparePreset, TunerSpec

_REPARAMETERIZE = "method.prompt_tuning.reparameterize"

SPEC = TunerSpec(
    name="prompt_tuning",
    order=10,  # first: the optimizer group of prompt-only checkpoints
    module="softprompt.tuners.prompt_tuning.build",
    settings=PromptTuningConfig,
    adapter="prompt",
    saved=("prompt_tuning", "prompt_bank"),
    presets=(
        ComparePreset("prompt", rank=10, enable=("prompt_tuning",)),
        ComparePreset(
            "residual",
            rank=50,
            enable=("prompt_tuning",),
            overrides=(f"{_REPARAMETERIZE}=residual",),
        ),
    ),
    compare_defaults=(f"{_REPARAMETERIZE}=none",),
)
