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
    reparameterize: Literal["none", "mlp", "lstm", "residual"] = Field(
        "none",
        description="Train the prompt through a small network whose output is the prompt: "
        "none (the vectors themselves); mlp / lstm: P-tuning's encoders, as PEFT's "
        "PromptEncoder (their input starts as N(0, 1) noise, as in PEFT, so init_method "
        "TEXT does not apply); residual: residual prompt tuning, emb + LayerNorm(up(ReLU("
        "down(emb)))), starting exactly at init_method's vectors. Saved prompts hold the "
        "network's output (plain prompt tuning); checkpoints also keep the network.",
    )
    reparameterize_hidden_size: int | None = Field(
        None,
        ge=1,
        le=65536,
        description="Width of the reparameterisation network: the MLP's hidden layers or "
        "each LSTM direction (default: the model's embedding width, as PEFT), or the "
        "residual bottleneck (default 400).",
    )
    reparameterize_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout inside the reparameterisation network while training: between "
        "the LSTM's two layers (lstm), on the branch before its LayerNorm (residual). The "
        "mlp encoder has none, as PEFT's.",
    )
    ensemble: int = Field(
        1,
        ge=1,
        le=64,
        description="Train this many prompts for the task in the same batches (seeds "
        "seed, seed+1, ...); predictions average them (label probabilities, or the mean "
        "log-probability of each member's generated candidate). 1: one prompt.",
    )

    @model_validator(mode="before")
    @classmethod
    def _upper_init(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("init_method"), str):
            data = {**data, "init_method": data["init_method"].upper()}
        if isinstance(data, dict) and isinstance(data.get("reparameterize"), str):
            data = {**data, "reparameterize": data["reparameterize"].lower()}
        return data

    @model_validator(mode="after")
    def _text_needs_text(self) -> PromptTuningConfig:
        if self.init_method == "TEXT" and not self.init_text:
            raise ValueError("init_method TEXT needs `init_text` (the text to start from)")
        return self

    @model_validator(mode="after")
    def _encoder_fits(self) -> PromptTuningConfig:
        kind = self.reparameterize
        if kind in ("mlp", "lstm") and self.init_method == "TEXT":
            raise ValueError(
                f"init_method TEXT does not apply with reparameterize {kind!r}: P-tuning's "
                "encoder input starts as N(0, 1) noise (as PEFT's); use init_method RANDOM, "
                "or reparameterize residual, which starts at the text's embeddings"
            )
        if kind == "mlp" and self.reparameterize_dropout > 0:
            raise ValueError(
                f"reparameterize_dropout {self.reparameterize_dropout} with reparameterize "
                "'mlp': P-tuning's MLP encoder has no dropout (use lstm or residual, or 0)"
            )
        return self
