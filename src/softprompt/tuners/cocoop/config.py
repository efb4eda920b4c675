"""Configuration of CoCoOp (the `method.cocoop` section); the names follow CoOp's own."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CocoopSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    enabled: bool = Field(
        False,
        description="CLIP / SigLIP: CoOp's shared context plus an image-conditioned token "
        "from a meta-net (Linear-ReLU-Linear, hidden = feature width / 16) added to every "
        "context vector (CoCoOp). Switches method.prompt_tuning off unless it is set.",
    )
    n_ctx: int = Field(
        4, ge=1, le=64, description="Context vectors M (N_CTX); ignored with ctx_init."
    )
    ctx_init: str = Field(
        "a photo of a",
        description="Words whose embeddings start the context (CTX_INIT); empty: N(0, 0.02).",
    )
    learning_rate: float = Field(
        0.002, gt=0, description="Learning rate of the context and the meta-net."
    )
