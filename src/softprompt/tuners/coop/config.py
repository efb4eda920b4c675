"""Configuration of CoOp (the `method.coop` section); the names follow CoOp's own."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CoopSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    enabled: bool = Field(
        False,
        description="CLIP / SigLIP: learn the context words of every class prompt "
        "'[ctx_1 ... ctx_M] NAME.' (CoOp); the model stays frozen. Switches "
        "method.prompt_tuning off unless it is set.",
    )
    n_ctx: int = Field(
        16, ge=1, le=64, description="Context vectors M (CoOp's N_CTX); ignored with ctx_init."
    )
    ctx_init: str = Field(
        "",
        description="Words whose embeddings start the context, e.g. 'a photo of a' "
        "(CTX_INIT); their token count sets M. Empty: N(0, 0.02) vectors.",
    )
    class_specific: bool = Field(
        False,
        description="One context per class (CSC) instead of one shared; a shared context "
        "also reads classes it was not trained on.",
    )
    class_token_position: Literal["end", "middle", "front"] = Field(
        "end", description="Where the class name goes in the prompt (CLASS_TOKEN_POSITION)."
    )
    learning_rate: float = Field(
        0.002,
        gt=0,
        description="Learning rate of the context (CoOp uses 0.002 with SGD; runs here train with AdamW).",
    )
