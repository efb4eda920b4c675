"""Configuration of the soft prompt tuner (the `method.prompt_tuning` section)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PromptTuningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = Field(True, description="Train a soft prompt in front of the input.")
    num_virtual_tokens: int = Field(20, ge=1, le=4096, description="Soft prompt length.")
    init_method: Literal["RANDOM", "VOCAB", "TEXT"] = Field(
        "VOCAB",
        description="RANDOM: normal noise scaled to the embedding matrix's statistics; VOCAB: "
        "rows sampled from the vocabulary; TEXT: embeddings of `init_text`, repeated or cut.",
    )
    init_text: str | None = Field(None, description="Text for init_method TEXT.")
    placement: Literal["before_image", "after_image"] = Field(
        "before_image",
        description="Vision-language models: the prompt goes before the image tokens or after "
        "them (just before the text).",
    )
    qformer_prompt_tokens: int = Field(
        0,
        ge=0,
        le=512,
        description="InstructBLIP: learnable tokens also put in front of the Q-Former's "
        "instruction (0 = none).",
    )

    @model_validator(mode="before")
    @classmethod
    def _upper_init(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("init_method"), str):
            data = {**data, "init_method": data["init_method"].upper()}
        return data

    @model_validator(mode="after")
    def _text_needs_text(self) -> PromptTuningConfig:
        if self.init_method == "TEXT" and not self.init_text:
            raise ValueError("init_method TEXT needs `init_text` (the text to start from)")
        return self
