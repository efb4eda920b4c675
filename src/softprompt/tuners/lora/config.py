"""Configuration of LoRA / QLoRA (the `method.lora` section)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    enabled: bool = Field(False, description="Add LoRA adapters (through peft) to the backbone.")
    r: int = Field(8, ge=1, le=4096, description="LoRA rank.")
    alpha: float = Field(16, gt=0, description="LoRA scaling numerator (lora_alpha).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA branch.")
    target_modules: Literal["auto"] | list[str] | str = Field(
        "auto",
        description="Modules that get LoRA: `auto` (the attention projections of the language "
        "model, from a per-family table: T5 q,v; Llama/OPT/BART q_proj,v_proj; GPT-2 c_attn), "
        "a list of module-name suffixes, or one regular expression matched against full "
        "module names. On BLIP-2 / InstructBLIP only language-model modules can take LoRA: "
        "the image side's outputs are cached per image.",
    )
    learning_rate: float = Field(2e-4, gt=0, description="Learning rate of the LoRA weights.")
    path: str | None = Field(
        None,
        description="Start from a saved LoRA adapter (a PEFT LoRA directory or a bundle's "
        "lora/); its adapter_config.json decides r, alpha and targets.",
    )
    trainable: bool = Field(
        True,
        description="false: keep the LoRA weights frozen (train a prompt on top of a trained "
        "LoRA given by `path`).",
    )
    quantization_bit: Literal[4, 8] | None = Field(
        None,
        description="QLoRA: load the frozen base weights in 4-bit NF4 (or 8-bit) through "
        "bitsandbytes, with LoRA on top.",
    )

    @model_validator(mode="after")
    def _frozen_needs_path(self) -> LoraSettings:
        if self.enabled and not self.trainable and not self.path:
            raise ValueError(
                "method.lora.trainable false needs method.lora.path (a trained LoRA adapter); "
                "a new frozen LoRA would do nothing"
            )
        return self
