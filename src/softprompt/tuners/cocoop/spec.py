"""The registration of CoCoOp."""

from __future__ import annotations

from softprompt.tuners.cocoop.config import CocoopSettings
from softprompt.tuners.spec import ComparePreset, TunerSpec

SPEC = TunerSpec(
    name="cocoop",
    order=81,
    module="softprompt.tuners.cocoop.tuner",
    settings=CocoopSettings,
    adapter="cocoop",
    saved=("cocoop",),
    presets=(ComparePreset("cocoop", rank=61, enable=("cocoop",)),),
    families=("clip",),
    replaces=("prompt_tuning",),
)
