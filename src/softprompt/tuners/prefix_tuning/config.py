"""Configuration of prefix tuning (the `method.prefix_tuning` section)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PrefixTuningSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    enabled: bool = Field(
        False,
        description="Prefix tuning (as PEFT's PREFIX_TUNING): learned keys and values put "
        "in front of every attention layer of the language model.",
    )
    num_virtual_tokens: int = Field(
        20, ge=1, le=4096, description="Prefix length: key/value positions added per layer."
    )
    projection: bool = Field(
        False,
        description="Train the prefix through PEFT's two-layer MLP (its `prefix_projection`): "
        "token embeddings -> Linear -> Tanh -> Linear to every layer's keys and values. "
        "Saved prefixes hold the MLP's output; checkpoints also keep the MLP.",
    )
    encoder_hidden_size: int | None = Field(
        None,
        ge=1,
        le=65536,
        description="Width of the projection MLP's hidden layer (PEFT's "
        "`encoder_hidden_size`; default: the width of one layer's keys, as PEFT).",
    )
    learning_rate: float | None = Field(
        None, gt=0, description="Learning rate of the prefix (default: training.learning_rate)."
    )
