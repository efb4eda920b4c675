"""Our prompt tuning computes what PEFT's does: same loss, same greedy tokens, same files."""

from __future__ import annotations

import pytest
import torch
from helpers import toy_task
from peft import PeftModel, PromptTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from softprompt.artifacts.prompt_dir import (
    check_compatible,
    fingerprint,
    load_prompt,
    save_prompt,
)
from softprompt.backbones.base import EncodeSettings
from softprompt.backbones.loading import load_backbone
from softprompt.data.records import TextExample
from softprompt.tuners.base import PromptInput

P = 6


def examples(n: int = 6) -> list[TextExample]:
    return [
        TextExample(id=r["id"], input=r["input"], target=r["target"]) for r in toy_task(n, seed=3)
    ]


def peft_model(path, task_type: str):
    auto = AutoModelForSeq2SeqLM if task_type == "SEQ_2_SEQ_LM" else AutoModelForCausalLM
    base = auto.from_pretrained(path)
    cfg = PromptTuningConfig(
        task_type=task_type, num_virtual_tokens=P, num_transformer_submodules=1
    )
    model = get_peft_model(base, cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.normal_(0, 0.5)
    return model.eval()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_causal_loss_matches_peft(tiny_models, kind):
    path = tiny_models[kind]
    peft = peft_model(path, "CAUSAL_LM")
    ours = load_backbone(str(path))
    ours.model.eval()
    prompt = peft.prompt_encoder["default"].embedding.weight.detach()
    batch = ours.collate(examples(), EncodeSettings(), with_targets=True)
    # Rows of different lengths: PEFT masks the right padding, we skip the mask for it.
    assert not bool(batch["attention_mask"].all())
    with torch.no_grad():
        ref = peft(**batch).loss
        total, count = ours.loss_sum(batch, PromptInput.single(prompt, 6))
    assert torch.allclose(total / count, ref, rtol=1e-5), (float(total / count), float(ref))


def test_seq2seq_loss_matches_peft(tiny_models):
    path = tiny_models["t5"]
    peft = peft_model(path, "SEQ_2_SEQ_LM")
    ours = load_backbone(str(path))
    ours.model.eval()
    prompt = peft.prompt_encoder["default"].embedding.weight.detach()
    batch = ours.collate(examples(), EncodeSettings(), with_targets=True)
    with torch.no_grad():
        ref = peft(**batch).loss
        total, count = ours.loss_sum(batch, PromptInput.single(prompt, 6))
    assert torch.allclose(total / count, ref, rtol=1e-5)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_greedy_generation_matches_peft(tiny_models, kind):
    path = tiny_models[kind]
    peft = peft_model(path, "CAUSAL_LM")
    ours = load_backbone(str(path))
    prompt = peft.prompt_encoder["default"].embedding.weight.detach()
    texts = ["red cat", "the dog ran fast on a big blue mat"]
    for text in texts:  # one at a time: PEFT's own batching pads differently
        enc = ours.tokenizer(text, return_tensors="pt")
        expected = peft.generate(**enc, max_new_tokens=8, do_sample=False)
        ex = [TextExample(id="0", input=text)]
        batch = ours.collate(ex, EncodeSettings(), with_targets=False)
        assert torch.equal(batch["input_ids"], enc["input_ids"])  # tokenizer(text) exactly
        got = ours.generate_ids(batch, PromptInput.single(prompt, 1), 8)
        new = expected[0, enc["input_ids"].shape[1] :]
        assert got[0, : len(new)].tolist() == new.tolist()


def test_batched_generation_equals_one_at_a_time(tiny_models):
    ours = load_backbone(str(tiny_models["llama"]))
    prompt = torch.randn(P, ours.hidden_size) * 0.5
    exs = examples(5)
    batch = ours.collate(exs, EncodeSettings(), with_targets=False)
    together = ours.generate(batch, PromptInput.single(prompt, 5), 6)
    alone = [
        ours.generate(ours.collate([e], EncodeSettings(), False), PromptInput.single(prompt, 1), 6)[
            0
        ]
        for e in exs
    ]
    assert together == alone


@pytest.mark.parametrize("kind,task", [("llama", "CAUSAL_LM"), ("t5", "SEQ_2_SEQ_LM")])
def test_peft_loads_our_prompt(tiny_models, tmp_path, kind, task):
    path = tiny_models[kind]
    ours = load_backbone(str(path))
    weight = torch.randn(P, ours.hidden_size)
    save_prompt(
        tmp_path / "p",
        weight,
        family=ours.family,
        base_model=str(path),
        fingerprint_info=fingerprint(ours.word_embeddings(), ours.tokenizer),
    )
    auto = AutoModelForSeq2SeqLM if task == "SEQ_2_SEQ_LM" else AutoModelForCausalLM
    loaded = PeftModel.from_pretrained(auto.from_pretrained(path), tmp_path / "p")
    got = loaded.prompt_encoder["default"].embedding.weight
    assert torch.allclose(got, weight)


@pytest.mark.parametrize("kind,task", [("gpt2", "CAUSAL_LM"), ("t5", "SEQ_2_SEQ_LM")])
def test_we_load_peft_prompt(tiny_models, tmp_path, kind, task):
    path = tiny_models[kind]
    auto = AutoModelForSeq2SeqLM if task == "SEQ_2_SEQ_LM" else AutoModelForCausalLM
    # PEFT's defaults: two prompts (encoder, decoder) for seq2seq.
    model = get_peft_model(
        auto.from_pretrained(path), PromptTuningConfig(task_type=task, num_virtual_tokens=P)
    )
    model.save_pretrained(tmp_path / "peft")
    loaded = load_prompt(tmp_path / "peft")
    expected = model.prompt_encoder["default"].embedding.weight[:P]
    assert loaded.weight.shape == (P, model.config.hidden_size if kind != "t5" else 32)
    assert torch.allclose(loaded.weight, expected)
    check_compatible(loaded, load_backbone(str(path)))


def test_wrong_base_model_fails_naming_both(tiny_models, tmp_path):
    gpt2 = load_backbone(str(tiny_models["gpt2"]))
    llama = load_backbone(str(tiny_models["llama"]))
    save_prompt(
        tmp_path / "p",
        torch.zeros(P, gpt2.hidden_size),
        family="causal_lm",
        base_model="tiny-gpt2",
        fingerprint_info=fingerprint(gpt2.word_embeddings(), gpt2.tokenizer),
    )
    with pytest.raises(ValueError) as err:
        check_compatible(load_prompt(tmp_path / "p"), llama)
    assert "tiny-gpt2" in str(err.value) and str(tiny_models["llama"]) in str(err.value)


def test_tampered_prompt_fails_checksum(tiny_models, tmp_path):
    gpt2 = load_backbone(str(tiny_models["gpt2"]))
    directory = save_prompt(
        tmp_path / "p",
        torch.zeros(P, gpt2.hidden_size),
        family="causal_lm",
        base_model="tiny-gpt2",
        fingerprint_info=fingerprint(gpt2.word_embeddings(), gpt2.tokenizer),
    )
    weights = directory / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        load_prompt(directory)


@pytest.mark.parametrize("kind", ["gpt2", "t5"])
def test_sequence_logprobs_sum_to_the_batch_loss(tiny_models, kind):
    ours = load_backbone(str(tiny_models[kind]))
    ours.model.eval()
    weight = torch.randn(P, ours.hidden_size)
    prompt = PromptInput.single(weight, 6)
    batch = ours.collate(examples(), EncodeSettings(), with_targets=True)
    with torch.no_grad():
        per_row = ours.sequence_logprobs(batch, prompt)
        total, _ = ours.loss_sum(batch, prompt)
        first = {k: v[:1] for k, v in batch.items()}
        single = ours.sequence_logprobs(first, PromptInput.single(weight, 1))
    assert per_row.shape == (6,)
    torch.testing.assert_close(-per_row.sum(), total, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(single[0], per_row[0], rtol=1e-4, atol=1e-4)
