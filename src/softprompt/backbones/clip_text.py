"""CLIP's and SigLIP's text towers run from input embeddings.

Class-prompt learning (CoOp, CoCoOp) replaces the word embeddings of a class prompt's
context ("a photo of a") with learned vectors and keeps the rest of the text tower
frozen. Hugging Face's `CLIPTextModel` and `SiglipTextModel` take only `input_ids`, so
this module runs their parts in the same order from `inputs_embeds`:

- CLIP: token + position embeddings, causal self-attention, the final layer norm, the
  hidden state at each prompt's end-of-text token, `text_projection`;
- SigLIP: the same without the causal mask, pooled at the last position (SigLIP pads
  every prompt to its full length), then the text `head`.

With the prompts' own word embeddings the features equal `get_text_features` exactly
(tests/test_clip_text.py checks both towers).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPModel, SiglipModel
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

ContrastiveModel = CLIPModel | SiglipModel


def token_embedding(model: ContrastiveModel) -> nn.Embedding:
    """The text tower's word-embedding table (what CoOp's context vectors stand in for)."""
    return model.text_model.embeddings.token_embedding


def pool_positions(model: ContrastiveModel, input_ids: torch.Tensor) -> torch.Tensor:
    """The position each prompt's features are read at, as the tower itself reads them.

    CLIP reads the first end-of-text token; checkpoints whose config still says
    `eos_token_id: 2` (written before transformers fixed it) read the highest token id,
    which is end-of-text in CLIP's vocabulary. SigLIP reads the last position.
    """
    if isinstance(model, SiglipModel):
        return torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, dtype=torch.long)
    eos = model.text_model.config.eos_token_id
    ids = input_ids.to(torch.int)
    if eos == 2:
        return ids.argmax(dim=-1).long()
    return (ids == eos).int().argmax(dim=-1).long()


def text_features_from_embeddings(
    model: ContrastiveModel,
    inputs_embeds: torch.Tensor,
    positions: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Projected text features (batch, projection dim) of prompts given as embeddings.

    Args:
        inputs_embeds: (batch, length, hidden) word embeddings, learned ones included;
            position embeddings are added here, as the tower adds them.
        positions: (batch,) the position each row is pooled at (`pool_positions`).
        attention_mask: (batch, length) 1 for real tokens; None attends to every position,
            as `get_text_features` does without one.
    """
    tower = model.text_model
    hidden = tower.embeddings(inputs_embeds=inputs_embeds)
    if isinstance(model, SiglipModel):
        mask = create_bidirectional_mask(
            config=tower.config, inputs_embeds=hidden, attention_mask=attention_mask
        )
        hidden = tower.encoder(inputs_embeds=hidden, attention_mask=mask).last_hidden_state
    else:
        mask = create_causal_mask(
            config=tower.config,
            inputs_embeds=hidden,
            attention_mask=attention_mask,
            past_key_values=None,
        )
        encoded = tower.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True)
        hidden = encoded.last_hidden_state
    hidden = tower.final_layer_norm(hidden)
    pooled = hidden[
        torch.arange(hidden.shape[0], device=hidden.device), positions.to(hidden.device)
    ]
    if isinstance(model, SiglipModel):
        return tower.head(pooled)
    return model.text_projection(pooled)


def class_logits(
    model: ContrastiveModel, image_features: torch.Tensor, text_features: torch.Tensor
) -> torch.Tensor:
    """(images, classes) logits as the model scores image-text pairs: cosine similarity
    times its learned logit scale (plus SigLIP's logit bias)."""
    images = image_features / image_features.norm(dim=-1, keepdim=True)
    texts = text_features / text_features.norm(dim=-1, keepdim=True)
    logits = model.logit_scale.exp() * images @ texts.t()
    return logits + model.logit_bias if isinstance(model, SiglipModel) else logits
