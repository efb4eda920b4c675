"""The registration of LoRA / QLoRA."""

from __future__ import annotations

from typing import Any

from softprompt.tuners.lora.config import LoraSettings
from softprompt.tuners.spec import ComparePreset, TunerSpec


def _quantization_needs_lora(methods: Any) -> None:
    # Checked on the whole `method` section, so the error stays reported under `method`.
    if methods.lora.quantization_bit and not methods.lora.enabled:
        raise ValueError(
            "method.lora.quantization_bit is set but method.lora.enabled is false: "
            "quantized base weights can only be trained through LoRA (QLoRA)"
        )


SPEC = TunerSpec(
    name="lora",
    order=40,
    module="softprompt.tuners.lora.tuner",
    settings=LoraSettings,
    adapter="lora",
    saved=("lora",),
    presets=(
        ComparePreset("lora", rank=20, enable=("lora",)),
        ComparePreset("prompt+lora", rank=30, enable=("prompt_tuning", "lora")),
    ),
    check=_quantization_needs_lora,
)
