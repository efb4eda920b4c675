"""LoRA and QLoRA through peft: low-rank updates inside the frozen backbone."""
