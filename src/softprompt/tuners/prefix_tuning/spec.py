"""The registration of prefix tuning."""

from __future__ import annotations

from softprompt.tuners.prefix_tuning.config import PrefixTuningSettings
from softprompt.tuners.spec import ComparePreset, TunerSpec

SPEC = TunerSpec(
    name="prefix_tuning",
    order=60,
    module="softprompt.tuners.prefix_tuning.tuner",
    settings=PrefixTuningSettings,
    adapter="prefix",
    saved=("prefix_tuning",),
    presets=(ComparePreset("prefix", rank=60, enable=("prefix_tuning",)),),
)
