"""The registration of CoOp."""

from __future__ import annotations

from softprompt.tuners.coop.config import CoopSettings
from softprompt.tuners.spec import ComparePreset, TunerSpec

SPEC = TunerSpec(
    name="coop",
    order=80,
    module="softprompt.tuners.coop.tuner",
    settings=CoopSettings,
    adapter="coop",
    saved=("coop",),
    presets=(ComparePreset("coop", rank=60, enable=("coop",)),),
    conflicts=(("cocoop", "CoCoOp is CoOp with an image-conditioned token; enable one"),),
    families=("clip",),
    replaces=("prompt_tuning",),
)
