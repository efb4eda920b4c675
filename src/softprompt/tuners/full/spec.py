"""The registration of full fine-tuning."""

from __future__ import annotations

from softprompt.tuners.full.config import FullSettings
from softprompt.tuners.spec import ComparePreset, TunerSpec

SPEC = TunerSpec(
    name="full",
    order=50,
    module="softprompt.tuners.full.tuner",
    settings=FullSettings,
    adapter="full",
    saved=("full",),
    presets=(ComparePreset("full", rank=40, enable=("full",)),),
    conflicts=(
        (
            "prefix_tuning",
            "a prefix adapts a frozen model (PEFT's format records the base model it was "
            "trained on); enable one",
        ),
        (
            "lora",
            "full fine-tuning already trains every weight LoRA would adapt; enable one of them",
        ),
    ),
)
