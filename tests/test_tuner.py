"""Soft prompt initialisation and the splice function."""

from __future__ import annotations

import torch

from softprompt.backbones.loading import load_backbone
from softprompt.backbones.splice import IGNORE_INDEX, splice_prompt
from softprompt.tuners.prompt_tuning.config import PromptTuningConfig
from softprompt.tuners.prompt_tuning.model import SoftPrompt


def test_splice_shapes_mask_and_labels():
    prompt = torch.randn(2, 3, 4)
    embeds = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    labels = torch.tensor([[IGNORE_INDEX, 7, 8, IGNORE_INDEX, IGNORE_INDEX], [1, 2, 3, 4, 5]])
    e, m, lab = splice_prompt(prompt, embeds, mask, labels)
    assert e.shape == (2, 8, 4) and m.shape == (2, 8) and lab.shape == (2, 8)
    assert torch.equal(e[:, :3], prompt) and torch.equal(e[:, 3:], embeds)
    assert m[:, :3].eq(1).all() and torch.equal(m[:, 3:], mask)
    assert lab[:, :3].eq(IGNORE_INDEX).all() and torch.equal(lab[:, 3:], labels)
    # Inserted in the middle (after image tokens, say).
    e2, m2, _ = splice_prompt(prompt, embeds, mask, None, position=2)
    assert torch.equal(e2[:, 2:5], prompt) and torch.equal(e2[:, :2], embeds[:, :2])
    assert torch.equal(splice_prompt(None, embeds, mask)[0], embeds)


def test_init_methods(tiny_models):
    backbone = load_backbone(str(tiny_models["llama"]))
    weight = backbone.word_embeddings().detach()
    gen = torch.Generator().manual_seed(0)

    random = SoftPrompt(64, backbone.hidden_size)
    random.initialize(
        PromptTuningConfig(num_virtual_tokens=64, init_method="RANDOM"),
        weight,
        backbone.tokenizer,
        gen,
    )
    # Scaled to the embedding matrix, not raw N(0, 1).
    ratio = random.embedding.weight.std() / weight.std()
    assert 0.7 < float(ratio) < 1.3

    vocab = SoftPrompt(6, backbone.hidden_size)
    vocab.initialize(
        PromptTuningConfig(num_virtual_tokens=6, init_method="VOCAB"),
        weight,
        backbone.tokenizer,
        gen,
    )
    special = set(backbone.tokenizer.all_special_ids)
    for row in vocab.embedding.weight:
        matches = (weight == row).all(dim=1).nonzero().flatten().tolist()
        assert matches and not set(matches) & special

    text = SoftPrompt(5, backbone.hidden_size)
    cfg = PromptTuningConfig(num_virtual_tokens=5, init_method="TEXT", init_text="red cat")
    text.initialize(cfg, weight, backbone.tokenizer, gen)
    ids = backbone.tokenizer("red cat", add_special_tokens=False)["input_ids"]
    expected = weight[torch.tensor((ids * 5)[:5])]
    assert torch.equal(text.embedding.weight, expected)
    assert text(3).shape == (3, 5, backbone.hidden_size)


def test_generation_inputs_are_left_aligned():
    from softprompt.backbones.splice import assemble_inputs

    prefix = torch.full((2, 2, 1), 9.0)
    prompt = torch.full((2, 1, 1), 7.0)
    # Row 0 is left-padded text of one token; row 1 is empty text (all padding).
    embeds = torch.tensor([[[0.0], [1.0]], [[0.0], [0.0]]])
    mask = torch.tensor([[0, 1], [0, 0]])
    e, m, _ = assemble_inputs(prompt, embeds, mask, None, prefix, prompt_position=0)
    assert m.tolist() == [[0, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    assert e[0, :, 0].tolist() == [0.0, 7.0, 9.0, 9.0, 1.0]
    assert e[1, 2:, 0].tolist() == [7.0, 9.0, 9.0]
