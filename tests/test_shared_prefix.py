"""A prompt in front of every row is computed once per batch: same loss and gradients."""

from __future__ import annotations

import pytest
import torch
from test_composed import build, examples, images  # noqa: F401  (fixtures)

from softprompt.backbones.base import EncodeSettings
from softprompt.backbones.causal_lm import CausalLMBackbone
from softprompt.backbones.loading import load_backbone
from softprompt.backbones.splice import shared_prompt_length
from softprompt.data.records import TextExample

ENC = EncodeSettings(max_input_length=32, max_target_length=8)


def count_shared_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = CausalLMBackbone._hidden_over_shared_prefix

    def spy(self, embeds, shared, groups=None):
        calls.append(shared)
        return original(self, embeds, shared, groups)

    monkeypatch.setattr(CausalLMBackbone, "_hidden_over_shared_prefix", spy)
    return calls


def loss_and_grads(backbone, batch, weight: torch.Tensor, shared: bool, **extra):
    """Loss sum, label count, row log-probs and the prompt's gradient, with the prompt as
    one tensor expanded over the batch (shared) or as a copied (B, P, D) tensor."""
    weight = weight.detach().clone().requires_grad_(True)
    rows = batch["input_ids"].shape[0]
    prompt = weight.unsqueeze(0).expand(rows, -1, -1)
    if not shared:
        prompt = prompt.contiguous()
    loss, count = backbone.loss_sum(batch, prompt, **extra)
    loss.backward()
    with torch.no_grad():
        logprobs = backbone.sequence_logprobs(batch, prompt, **extra)
    return loss.detach(), count, logprobs, weight.grad


def assert_grads_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal up to float32 summation order, relative to the gradient's size."""
    scale = float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_shared_prompt_matches_full_forward(tiny_models, monkeypatch, kind) -> None:
    torch.manual_seed(0)
    backbone = load_backbone(str(tiny_models[kind]))
    texts = ["the cat sat", "a dog", "red green blue yellow black", "on"]
    targets = ["mat", "barks loudly", "colours", "top of it all"]
    rows = [
        TextExample(id=str(i), input=t, target=g)
        for i, (t, g) in enumerate(zip(texts, targets, strict=True))
    ]
    batch = backbone.collate(rows, ENC, True)
    assert not bool(batch["attention_mask"].all()), "the batch should be right-padded"
    weight = backbone.word_embeddings()[5:9]
    calls = count_shared_calls(monkeypatch)
    full = loss_and_grads(backbone, batch, weight, shared=False)
    assert calls == []
    once = loss_and_grads(backbone, batch, weight, shared=True)
    assert calls == [4, 4]  # loss_sum and sequence_logprobs took the shared path
    torch.testing.assert_close(once[0], full[0], rtol=1e-5, atol=1e-5)
    assert int(once[1]) == int(full[1])
    torch.testing.assert_close(once[2], full[2], rtol=1e-5, atol=1e-5)
    assert full[3].abs().sum() > 0
    assert_grads_close(once[3], full[3])


def test_shared_prompt_in_front_of_image_tokens(tiny_clip, tiny_models, images, monkeypatch):  # noqa: F811
    backbone = build(tiny_clip, tiny_models, placement="before_image")
    paths = images["red"][:2] + images["blue"][:2]
    batch = backbone.collate(examples(paths, ["what color", "is it", "colour?", "say"]), ENC, True)
    weight = backbone.word_embeddings()[3:6]
    calls = count_shared_calls(monkeypatch)
    full = loss_and_grads(backbone, batch, weight, shared=False)
    once = loss_and_grads(backbone, batch, weight, shared=True)
    assert calls == [3, 3]
    torch.testing.assert_close(once[0], full[0], rtol=1e-5, atol=1e-5)
    assert_grads_close(once[3], full[3])
    # Behind the image tokens the prompt's positions differ per row: no sharing.
    after = build(tiny_clip, tiny_models, placement="after_image")
    calls.clear()
    loss_and_grads(after, after.collate(examples(paths), ENC, True), weight, shared=True)
    assert calls == []


def test_shared_prompt_length_only_for_provably_equal_rows() -> None:
    weight = torch.randn(3, 8)
    assert shared_prompt_length(weight.unsqueeze(0).expand(4, -1, -1), 0) == 3
    assert shared_prompt_length(weight.unsqueeze(0), 0) == 3
    assert shared_prompt_length(weight.unsqueeze(0).expand(4, -1, -1), 2) == 0
    # Equal values in separate rows are not trusted (a per-row prompt could differ).
    assert shared_prompt_length(weight.unsqueeze(0).repeat(4, 1, 1), 0) == 0
    assert shared_prompt_length(None, 0) == 0


def test_gradient_checkpointing_takes_the_plain_path(tiny_models, monkeypatch) -> None:
    # Checkpointing turns the KV cache off in training: the shared path would get no cache.
    backbone = load_backbone(str(tiny_models["llama"]))
    rows = [
        TextExample(id="0", input="a b", target="c"),
        TextExample(id="1", input="a b c", target="d"),
    ]
    batch = backbone.collate(rows, ENC, True)
    weight = backbone.word_embeddings()[5:8]
    want = loss_and_grads(backbone, batch, weight, shared=False)
    backbone.model.train()
    backbone.model.gradient_checkpointing_enable(
        gradient_checkpointing_kwargs={"use_reentrant": False}
    )
    calls = count_shared_calls(monkeypatch)
    got = loss_and_grads(backbone, batch, weight, shared=True)
    assert calls == []
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    assert_grads_close(got[3], want[3])
