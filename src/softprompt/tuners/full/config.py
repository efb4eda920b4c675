"""Configuration of full fine-tuning (the `method.full` section)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class FullSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    enabled: bool = Field(
        False,
        description="Full fine-tuning of the language model (the baseline of the method "
        "table); frozen image encoders stay frozen.",
    )
    learning_rate: float = Field(2e-5, gt=0, description="Learning rate of the full model.")
