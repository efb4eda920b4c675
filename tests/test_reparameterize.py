"""Reparameterised soft prompts: P-tuning's MLP / LSTM encoders and residual prompt tuning.

They train with the raw embeddings, save merged (a plain PEFT prompt that gives the same
outputs), and resume exactly from checkpoints that keep the encoder.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import make_config, toy_task, write_config
from peft import PeftModel, PromptEncoder, PromptEncoderConfig
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from softprompt.artifacts.bundle import read_bundle
from softprompt.artifacts.prompt_dir import (
    ENCODER_FILE,
    PromptLoadError,
    fingerprint,
    load_prompt,
)
from softprompt.backbones.base import EncodeSettings
from softprompt.backbones.loading import load_backbone
from softprompt.commands.cli import main
from softprompt.config.run import ConfigError, build_config
from softprompt.data.records import TextExample
from softprompt.tuners.base import trainable_parameters
from softprompt.tuners.prompt_tuning.config import PromptTuningConfig
from softprompt.tuners.prompt_tuning.model import SoftPrompt
from softprompt.tuners.prompt_tuning.reparam import ResidualEncoder, build_encoder
from softprompt.tuners.prompt_tuning.tuner import PromptTuner, load_saved_prompt
from softprompt.workflows.compare import METHODS

pytestmark = pytest.mark.usefixtures("one_thread")

ENC = EncodeSettings(max_input_length=32, max_target_length=4)
KINDS = ("mlp", "lstm", "residual")


def tuner_for(backbone, kind: str, **extra) -> PromptTuner:
    # P-tuning's encoders take N(0, 1) inputs; TEXT init is refused for them.
    init = {"init_method": "TEXT", "init_text": "red cat"} if kind == "residual" else {}
    cfg = PromptTuningConfig(num_virtual_tokens=4, reparameterize=kind, **init, **extra)
    return PromptTuner.for_backbone(cfg, backbone, learning_rate=0.03, seed=0)


def toy_batch(backbone, n: int = 16, with_targets: bool = True):
    rows = [TextExample(id=r["id"], input=r["input"], target=r["target"]) for r in toy_task(n)]
    return backbone.collate(rows, ENC, with_targets)


def train_steps(backbone, tuner: PromptTuner, steps: int) -> list[float]:
    batch = toy_batch(backbone)
    optimizer = torch.optim.AdamW(trainable_parameters(tuner), lr=0.03)
    losses = []
    for _ in range(steps):
        loss, count = backbone.loss_sum(batch, tuner.prompt_input(16))
        (loss / count).backward()
        losses.append(float(loss.detach() / count))
        optimizer.step()
        optimizer.zero_grad()
    return losses


def context_for(backbone) -> dict:
    fp = fingerprint(backbone.word_embeddings(), backbone.tokenizer)
    return {"family": backbone.family, "base_model": backbone.name_or_path, "fingerprint": fp}


def test_config_checks_and_compare_rows():
    assert PromptTuningConfig(reparameterize="RESIDUAL").reparameterize == "residual"
    with pytest.raises(ValueError, match="init_method TEXT does not apply"):
        PromptTuningConfig(reparameterize="mlp", init_method="TEXT", init_text="x")
    with pytest.raises(ValueError, match="has no dropout"):
        PromptTuningConfig(reparameterize="mlp", reparameterize_dropout=0.1)
    with pytest.raises(ConfigError, match="reparameterize_hidden_size"):
        build_config({"method": {"prompt_tuning": {"reparameterize_hidden_size": 0}}})
    with pytest.raises(ConfigError, match="reparameterize"):
        build_config({"method": {"prompt_tuning": {"reparameterize": "gru"}}})
    # Every compare row says which prompt it trains, so a config's choice never leaks.
    assert "method.prompt_tuning.reparameterize=residual" in METHODS["residual"]
    for name, overrides in METHODS.items():
        chosen = [o for o in overrides if o.startswith("method.prompt_tuning.reparameterize=")]
        assert len(chosen) == 1, name
        if name != "residual":
            assert chosen == ["method.prompt_tuning.reparameterize=none"], name


@pytest.mark.parametrize("kind", ["mlp", "lstm"])
def test_p_tuning_encoders_compute_what_peft_computes(kind):
    p, d = 5, 16
    cfg = PromptTuningConfig(num_virtual_tokens=p, reparameterize=kind)
    prompt = SoftPrompt(p, d, build_encoder(cfg, d, seed=0))
    peft = PromptEncoder(
        PromptEncoderConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=p,
            token_dim=d,
            num_transformer_submodules=1,
            encoder_reparameterization_type=kind.upper(),
            encoder_hidden_size=d,
        )
    )
    # Same parameter names as PEFT's (under `encoder.`): its weights load into ours.
    state = {
        ("" if k.startswith("embedding") else "encoder.") + k: v
        for k, v in peft.state_dict().items()
    }
    prompt.load_state_dict(state)  # strict: every name matches
    with torch.no_grad():
        torch.testing.assert_close(prompt.vectors(), peft(torch.arange(p)))


def test_initial_prompts(tiny_models):
    backbone = load_backbone(str(tiny_models["llama"]))
    weight = backbone.word_embeddings().detach()
    # Residual: the skip connection and a zero LayerNorm gain start at the TEXT init exactly.
    residual = tuner_for(backbone, "residual")
    ids = backbone.tokenizer("red cat", add_special_tokens=False)["input_ids"]
    expected = weight[torch.tensor((ids * 4)[:4])]
    assert torch.equal(residual.vectors(), expected)
    assert torch.equal(residual.prompt.merged(), expected)
    # P-tuning (as PEFT): N(0, 1) inputs, the prompt is the encoder's output for them.
    mlp = tuner_for(backbone, "mlp")
    assert 0.7 < float(mlp.weight.std()) < 1.3
    assert not torch.allclose(mlp.vectors(), mlp.weight)
    # Same seed, same encoder; another seed, another one.
    again = tuner_for(backbone, "mlp")
    assert torch.equal(again.vectors(), mlp.vectors())
    other = PromptTuner.for_backbone(mlp.config, backbone, 0.03, seed=1)
    assert not torch.equal(other.vectors(), mlp.vectors())


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_trains_with_the_backbone_frozen(tiny_models, kind):
    backbone = load_backbone(str(tiny_models["llama"]))
    frozen = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    tuner = tuner_for(backbone, kind)
    encoder_params = dict(tuner.prompt.encoder.named_parameters())
    assert encoder_params and all(p.requires_grad for p in encoder_params.values())
    # The optimizer sees the embeddings first, then the encoder (checkpoints rely on it).
    params = trainable_parameters(tuner)
    assert params[0] is tuner.weight and len(params) == 1 + len(encoder_params)
    losses = train_steps(backbone, tuner, 12)
    assert losses[-1] < losses[0] - 0.5, losses
    # One more backward: every encoder weight gets a gradient (the residual branch's
    # projections from the second step on, once its LayerNorm gain has moved off zero).
    loss, count = backbone.loss_sum(toy_batch(backbone), tuner.prompt_input(16))
    (loss / count).backward()
    for name, param in encoder_params.items():
        assert param.grad is not None and float(param.grad.abs().sum()) > 0, name
    assert float(tuner.weight.grad.abs().sum()) > 0
    after = backbone.model.state_dict()
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)


@pytest.mark.parametrize("model", ["llama", "t5"])
@pytest.mark.parametrize("kind", KINDS)
def test_merged_prompt_gives_the_same_outputs(tiny_models, tmp_path, model, kind):
    backbone = load_backbone(str(tiny_models[model]))
    dropout = {} if kind == "mlp" else {"reparameterize_dropout": 0.3}
    tuner = tuner_for(backbone, kind, **dropout)
    train_steps(backbone, tuner, 3)
    tuner.save(tmp_path / "p", context_for(backbone))
    merged = load_saved_prompt(backbone, read_bundle(tmp_path / "p"), None)
    assert merged.prompt.encoder is None
    assert torch.equal(merged.weight, tuner.prompt.merged())
    labelled, bare = toy_batch(backbone, 6), toy_batch(backbone, 6, with_targets=False)
    with torch.no_grad():  # eval mode: the encoder's dropout is off, as at save time
        want = backbone.loss_sum(labelled, tuner.prompt_input(6))
        got = backbone.loss_sum(labelled, merged.prompt_input(6))
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        texts = backbone.generate(bare, tuner.prompt_input(6), max_new_tokens=4)
        assert backbone.generate(bare, merged.prompt_input(6), max_new_tokens=4) == texts


@pytest.mark.parametrize("model", ["gpt2", "t5"])
def test_saved_prompt_is_a_plain_peft_prompt(tiny_models, tmp_path, model):
    backbone = load_backbone(str(tiny_models[model]))
    tuner = tuner_for(backbone, "residual")
    train_steps(backbone, tuner, 2)
    tuner.save(tmp_path / "p", context_for(backbone))
    auto = AutoModelForSeq2SeqLM if model == "t5" else AutoModelForCausalLM
    peft = PeftModel.from_pretrained(auto.from_pretrained(tiny_models[model]), tmp_path / "p")
    assert peft.peft_config["default"].peft_type.value == "PROMPT_TUNING"
    got = peft.prompt_encoder["default"].embedding.weight
    assert torch.allclose(got, tuner.prompt.merged())
    assert not torch.allclose(got, tuner.weight.detach())  # merged, not the raw input


def test_encoder_state_loads_checked_and_only_where_it_fits(tiny_models, tmp_path):
    backbone = load_backbone(str(tiny_models["llama"]))
    tuner = tuner_for(backbone, "lstm")
    train_steps(backbone, tuner, 2)
    tuner.save(tmp_path / "p", context_for(backbone))
    meta = json.loads((tmp_path / "p" / "softprompt.json").read_text())
    assert ENCODER_FILE in meta["files"] and meta["reparameterize"] == "lstm"

    # A fresh run's tuner (same config) gets the unmerged state back exactly.
    fresh = tuner_for(backbone, "lstm")
    fresh.load(tmp_path / "p")
    state, want = fresh.prompt.state_dict(), tuner.prompt.state_dict()
    assert all(torch.equal(state[k], want[k]) for k in want)
    # A plain tuner takes the merged vectors.
    plain = PromptTuner.for_backbone(PromptTuningConfig(num_virtual_tokens=4), backbone, 0.1, 0)
    plain.load(tmp_path / "p")
    assert torch.equal(plain.weight, tuner.prompt.merged())
    # An encoder of another width, or a plain prompt, cannot fill this run's encoder.
    wider = tuner_for(backbone, "lstm", reparameterize_hidden_size=7)
    with pytest.raises(ValueError, match="does not fit this run's encoder"):
        wider.load(tmp_path / "p")
    plain.save(tmp_path / "plain", context_for(backbone))
    assert not (tmp_path / "plain" / ENCODER_FILE).exists()
    with pytest.raises(ValueError, match="holds a plain prompt"):
        fresh.load(tmp_path / "plain")
    # Saving a plain prompt into the same folder drops the stale encoder.
    plain.save(tmp_path / "p", context_for(backbone))
    assert not (tmp_path / "p" / ENCODER_FILE).exists()
    # The encoder file is checksummed like the weights.
    tuner.save(tmp_path / "q", context_for(backbone))
    state_file = tmp_path / "q" / ENCODER_FILE
    tensors = load_file(str(state_file))
    tensors["embedding.weight"] = tensors["embedding.weight"] + 1
    save_file(tensors, str(state_file))
    with pytest.raises(PromptLoadError, match="checksum"):
        load_prompt(tmp_path / "q")


def test_residual_branch_is_the_papers_formula():
    enc = ResidualEncoder(6, 3)
    with torch.no_grad():
        enc.norm.weight.fill_(0.5)
    x = torch.randn(4, 6)
    branch = enc.up(torch.relu(enc.down(x)))
    want = x + torch.nn.functional.layer_norm(branch, (6,), enc.norm.weight, enc.norm.bias)
    torch.testing.assert_close(enc(x), want)


def resume_config(tiny_models, toy_data, tmp_path, method: dict) -> str:
    cfg = make_config(
        tiny_models["llama"],
        toy_data,
        tmp_path / "full",
        method=method,
        task={"max_new_tokens": 3},
        epochs=2,
        batch_size=8,
        learning_rate=0.03,
        save_steps=3,
        save_total_limit=None,
        eval_generate=False,
    )
    return str(write_config(tmp_path / "config.yaml", cfg))


RESUME_CASES = {
    # A prompt-only run: the prompt directory is the checkpoint's root.
    "residual": {"prompt_tuning": {"num_virtual_tokens": 4, "reparameterize": "residual",
                                   "reparameterize_dropout": 0.2}},
    # Prompt + LoRA: a bundle, the encoder in prompt/, two optimizer groups.
    "lstm+lora": {"prompt_tuning": {"num_virtual_tokens": 4, "init_method": "RANDOM",
                                    "reparameterize": "lstm", "reparameterize_hidden_size": 8},
                  "lora": {"enabled": True, "r": 2, "target_modules": ["q_proj", "v_proj"]}},
}  # fmt: skip


@pytest.mark.parametrize("case", RESUME_CASES)
def test_resume_through_the_cli_equals_an_uninterrupted_run(
    tiny_models, toy_data, tmp_path, capsys, case
):
    config = resume_config(tiny_models, toy_data, tmp_path, RESUME_CASES[case])
    assert main(["train", config, "--no-progress"]) == 0
    full = tmp_path / "full"
    prompt_dir = "prompt/" if "lora" in case else ""
    final = full / "checkpoint-12"
    assert (final / f"{prompt_dir}{ENCODER_FILE}").is_file()

    # A run stopped after step 6 (its checkpoint-6), resumed to the end.
    part = tmp_path / "part"
    part.mkdir()
    shutil.copytree(full / "checkpoint-6", part / "checkpoint-6")
    resume = ["train", config, f"training.output_dir={part}", "--resume", "auto"]
    assert main([*resume, "--no-progress"]) == 0
    capsys.readouterr()
    for name in (f"{prompt_dir}{ENCODER_FILE}", f"{prompt_dir}adapter_model.safetensors",
                 "optimizer.safetensors"):  # fmt: skip
        assert (part / "checkpoint-12" / name).read_bytes() == (final / name).read_bytes(), name
    six = load_file(str(full / "checkpoint-6" / f"{prompt_dir}{ENCODER_FILE}"))
    twelve = load_file(str(final / f"{prompt_dir}{ENCODER_FILE}"))
    assert not torch.equal(six["embedding.weight"], twelve["embedding.weight"])

    # best/ holds the encoder too; eval loads it as a plain prompt.
    assert (full / "best" / f"{prompt_dir}{ENCODER_FILE}").is_file()
    out = tmp_path / "eval.json"
    evaluate = ["eval", config, "--prompt", str(full / "best"), "--split", "val"]
    assert main([*evaluate, "--loss-only", "--output", str(out), "--no-progress"]) == 0
    metrics = json.loads(out.read_text())["val"]
    results = json.loads((full / "all_results.json").read_text())
    assert metrics["loss"] == pytest.approx(results["best_metric"], rel=1e-5)
