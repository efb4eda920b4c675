"""CLIP's and SigLIP's text towers run from word embeddings give `get_text_features`
exactly: the ground class-prompt learning stands on (a learned context replaces some of
those embeddings, the rest of the tower is unchanged)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close
from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

from softprompt.backbones.clip_text import (
    pool_positions,
    text_features_from_embeddings,
    token_embedding,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "vocab_size": 99, "max_position_embeddings": 16}  # fmt: skip
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 2, "image_size": 32, "patch_size": 8}  # fmt: skip


def tiny_clip(eos_token_id: int) -> CLIPModel:
    torch.manual_seed(0)
    text = {**TEXT, "eos_token_id": eos_token_id, "bos_token_id": 97, "pad_token_id": 0}
    config = CLIPConfig(text_config=text, vision_config=VISION, projection_dim=24)
    return CLIPModel(config).eval()


def tiny_siglip() -> SiglipModel:
    torch.manual_seed(0)
    config = SiglipConfig(text_config={**TEXT, "projection_size": 32}, vision_config=VISION)
    return SiglipModel(config).eval()


def clip_prompts(eos: int) -> torch.Tensor:
    """Three prompts of different lengths: BOS, words, EOS, then padding (id 0)."""
    rows = [
        [97, 5, 6, 7, eos, 0, 0, 0],
        [97, 8, eos, 0, 0, 0, 0, 0],
        [97, 9, 10, 11, 12, 13, eos, 0],
    ]
    return torch.tensor(rows)


def features(model, ids: torch.Tensor) -> torch.Tensor:
    out = model.get_text_features(input_ids=ids)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@pytest.mark.parametrize("eos", [98, 2], ids=["eos-id", "legacy-argmax"])
def test_clip_from_embeddings_equals_get_text_features(eos):
    model = tiny_clip(eos)
    ids = clip_prompts(98 if eos == 2 else eos)  # legacy configs find EOS as the top id
    with torch.no_grad():
        ours = text_features_from_embeddings(
            model, token_embedding(model)(ids), pool_positions(model, ids)
        )
        theirs = features(model, ids)
    assert ours.shape == (3, 24)
    assert_close(ours, theirs)
    assert pool_positions(model, ids).tolist() == [4, 2, 6]


def test_siglip_from_embeddings_equals_get_text_features():
    model = tiny_siglip()
    ids = torch.tensor([[5, 6, 7, 1, 1, 1], [8, 9, 10, 11, 12, 1]])
    with torch.no_grad():
        ours = text_features_from_embeddings(
            model, token_embedding(model)(ids), pool_positions(model, ids)
        )
        theirs = features(model, ids)
    assert_close(ours, theirs)
    assert pool_positions(model, ids).tolist() == [5, 5]


def test_replaced_context_changes_only_through_the_tower():
    """A learned context in place of the context words moves the features, and gradients
    reach the context alone (the tower stays frozen)."""
    model = tiny_clip(98)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    ids = clip_prompts(98)
    embeds = token_embedding(model)(ids)
    context = torch.zeros(2, embeds.shape[-1], requires_grad=True)
    spliced = torch.cat([embeds[:, :1], context.expand(3, -1, -1), embeds[:, 3:]], dim=1)
    out = text_features_from_embeddings(model, spliced, pool_positions(model, ids))
    out.sum().backward()
    assert context.grad is not None and context.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
