"""LoRA and QLoRA through peft: low-rank updates inside the frozen backbone."""

from softprompt.tuners.lora.config import LoraSettings

__all__ = ["LoraSettings"]
