"""LoRA, prompt + LoRA, full fine-tuning and QLoRA through the tuner engine."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import make_config, prompt_method
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from softprompt.backbones.base import EncodeSettings
from softprompt.backbones.loading import load_backbone
from softprompt.commands.cli import main
from softprompt.config.run import ConfigError, RunConfig, build_config
from softprompt.data.records import TextExample
from softprompt.inference.loaded import LoadedModel
from softprompt.train.loop import train
from softprompt.tuners.base import PromptInput
from softprompt.tuners.lora.config import LoraSettings
from softprompt.tuners.lora.tuner import LoraTuner

ROWS = [TextExample(id=str(i), input=f"cat red dog {i}", target="red") for i in range(4)]


TRAINING = {
    "max_steps": 6,
    "batch_size": 8,
    "learning_rate": 0.3,
    "logging_steps": 1,
    "eval_steps": 3,
    "eval_generate": False,
    "save_total_limit": None,
}


def run_config(model_dir, data, out, prompt=True, lora=None, full=False, **training) -> RunConfig:
    method = {
        **prompt_method(enabled=prompt),
        "full": {"enabled": full, "learning_rate": 1e-3},
    }
    if lora is not None:
        method["lora"] = {"enabled": True, "r": 4, "learning_rate": 1e-2, **lora}
    task = {"max_new_tokens": 3}
    raw = make_config(model_dir, data, out, method=method, task=task, training=TRAINING, **training)
    return build_config(raw)


def row_losses(loaded: LoadedModel) -> torch.Tensor:
    """Per-row log-probabilities of the fixed rows under the model as switched now."""
    bb = loaded.backbone
    batch = bb.collate(ROWS, EncodeSettings(), with_targets=True)
    with torch.no_grad():
        return bb.sequence_logprobs(batch, loaded.tuners.prompt_input(len(ROWS)))


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_lora_trains_and_peft_loads_it(tiny_models, toy_data, tmp_path, kind):
    out = tmp_path / "run"
    results = train(run_config(tiny_models[kind], toy_data, out, prompt=False, lora={}))
    losses = [e["eval_loss"] for e in results["evaluations"]]
    assert losses[-1] < losses[0], losses
    assert results["methods"] == ["lora"]
    assert results["trainable_parameters"] == results["trainable_parameters_by_method"]["lora"]
    manifest = json.loads((out / "best" / "softprompt.json").read_text())
    assert manifest["adapters"] == {"lora": {"path": "lora", "method": "lora", "enabled": True}}
    # PEFT's own loader reads our adapter and gives our model's outputs.
    ours = LoadedModel.from_bundle(out / "best", device="cpu")
    base = type(ours.backbone.model).from_pretrained(str(tiny_models[kind]))
    peft_model = PeftModel.from_pretrained(base, str(out / "best" / "lora")).eval()
    batch = ours.backbone.collate(ROWS, EncodeSettings(), with_targets=True)
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if kind == "t5":
        kwargs["labels"] = batch["labels"]
    with torch.no_grad():
        theirs = peft_model(**kwargs).logits
        mine = ours.backbone.model(**kwargs).logits
        bare = type(base).from_pretrained(str(tiny_models[kind])).eval()(**kwargs).logits
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(mine, bare)  # LoRA changed the model


def test_a_lora_peft_saved_loads_into_ours(tiny_models, tmp_path):
    base = AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]))
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(str(tmp_path / "peft_lora"))
    backbone = load_backbone(str(tiny_models["llama"]))
    LoraTuner.from_dir(backbone, tmp_path / "peft_lora")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(
            backbone.model(input_ids=ids).logits, peft_model.eval()(input_ids=ids).logits
        )


def test_prompt_and_lora_train_jointly_and_switch_exactly(tiny_models, toy_data, tmp_path):
    out = tmp_path / "joint"
    train(run_config(tiny_models["llama"], toy_data, out, lora={}))
    best = out / "best"
    assert {p.name for p in best.iterdir()} >= {"prompt", "lora", "softprompt.json"}
    first = tmp_path / "first"
    train(run_config(tiny_models["llama"], toy_data, first, max_steps=1, eval_steps=1))
    loaded = LoadedModel.from_bundle(best, device="cpu")
    assert loaded.tuners.states() == {"prompt": True, "lora": True}
    both = row_losses(loaded)
    loaded.set_adapters({"prompt": False})
    lora_only = row_losses(loaded)
    loaded.set_adapters({"prompt": True, "lora": False})
    prompt_only = row_losses(loaded)
    assert not torch.allclose(both, lora_only) and not torch.allclose(both, prompt_only)
    # Prompt off is exactly the LoRA-only model; LoRA off exactly the prompt-only one.
    lora_model = LoadedModel.from_bundle(best, device="cpu")
    lora_model.tuners = type(lora_model.tuners)(
        [lora_model.tuners.get("lora")], lora_model.backbone
    )
    torch.testing.assert_close(lora_only, row_losses(lora_model))
    bare = load_backbone(str(tiny_models["llama"]))
    prompt_weight = load_file(str(best / "prompt" / "adapter_model.safetensors"))
    batch = bare.collate(ROWS, EncodeSettings(), with_targets=True)
    with torch.no_grad():
        expected = bare.sequence_logprobs(
            batch, PromptInput.single(prompt_weight["prompt_embeddings"], len(ROWS))
        )
    torch.testing.assert_close(prompt_only, expected)
    # Both moved from their start: the prompt and the LoRA B matrices (zero at start).
    lora_weights = load_file(str(best / "lora" / "adapter_model.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in lora_weights.items() if "lora_B" in k)
    start = load_file(str(first / "checkpoint-1" / "adapter_model.safetensors"))
    assert not torch.allclose(start["prompt_embeddings"], prompt_weight["prompt_embeddings"])


def test_prompt_on_a_frozen_lora(tiny_models, toy_data, tmp_path):
    lora_run = tmp_path / "lora"
    train(run_config(tiny_models["t5"], toy_data, lora_run, prompt=False, lora={}, max_steps=3))
    trained = lora_run / "best" / "lora"
    out = tmp_path / "prompt_on_lora"
    config = run_config(
        tiny_models["t5"], toy_data, out, lora={"path": str(trained), "trainable": False}
    )
    results = train(config)
    assert results["trainable_parameters_by_method"]["lora"] == 0
    assert (
        results["trainable_parameters"]
        == results["trainable_parameters_by_method"]["prompt_tuning"]
    )
    before = load_file(str(trained / "adapter_model.safetensors"))
    after = load_file(str(out / "best" / "lora" / "adapter_model.safetensors"))
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


def test_exact_resume_with_lora(tiny_models, toy_data, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(
        run_config(
            tiny_models["gpt2"], toy_data, whole, lora={}, save_steps=3, lr_scheduler="constant"
        )
    )
    config = run_config(
        tiny_models["gpt2"], toy_data, parts, lora={}, save_steps=3, lr_scheduler="constant"
    )
    config.training.max_steps = 3
    train(config)
    config.training.max_steps = 6
    train(config, resume="auto")
    for adapter in ("prompt", "lora"):
        a = load_file(str(whole / "checkpoint-6" / adapter / "adapter_model.safetensors"))
        b = load_file(str(parts / "checkpoint-6" / adapter / "adapter_model.safetensors"))
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_full_fine_tuning_trains_every_weight(tiny_models, toy_data, tmp_path):
    out = tmp_path / "full"
    results = train(run_config(tiny_models["gpt2"], toy_data, out, prompt=False, full=True))
    losses = [e["eval_loss"] for e in results["evaluations"]]
    assert losses[-1] < losses[0], losses
    assert results["trainable_parameters"] == results["total_parameters"]
    loaded = LoadedModel.from_bundle(out / "best", device="cpu")
    assert loaded.tuners.states() == {"full": True}
    with pytest.raises(ConfigError, match="cannot be switched off"):
        loaded.set_adapters({"full": False})
    tuned = AutoModelForCausalLM.from_pretrained(str(out / "best" / "full"))  # a real checkpoint
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(
            tuned(input_ids=ids).logits, loaded.backbone.model(input_ids=ids).logits
        )


def test_method_switches_are_validated(tiny_models, toy_data, tmp_path):
    with pytest.raises(ConfigError, match="both enabled"):
        run_config(tiny_models["gpt2"], toy_data, tmp_path, lora={}, full=True)
    with pytest.raises(ConfigError, match="needs method.lora.path"):
        run_config(tiny_models["gpt2"], toy_data, tmp_path, lora={"trainable": False})
    with pytest.raises(ConfigError, match="nothing to train"):
        train(run_config(tiny_models["gpt2"], toy_data, tmp_path / "none", prompt=False))


def test_qlora_trains_on_cpu(tiny_models, toy_data, tmp_path):
    out = tmp_path / "qlora"
    config = run_config(
        tiny_models["llama"], toy_data, out, prompt=False, lora={"quantization_bit": 4}
    )
    results = train(config)
    losses = [e["eval_loss"] for e in results["evaluations"]]
    assert losses[-1] < losses[0], losses
    lora = load_file(str(out / "best" / "lora" / "adapter_model.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)


def test_cli_switches_an_adapter_off(tiny_models, toy_data, tmp_path, capsys):
    out = tmp_path / "run"
    train(run_config(tiny_models["llama"], toy_data, out, lora={}, max_steps=2))
    outputs = {}
    for switch in ([], ["--adapter", "prompt=off"], ["--adapter", "lora=off"]):
        args = ["predict", "--prompt", str(out / "best"), "--text", "cat red", "--no-progress"]
        assert main(args + ["--max-new-tokens", "4", *switch]) == 0
        outputs[tuple(switch)] = json.loads(capsys.readouterr().out.splitlines()[0])["prediction"]
    assert (
        main(["predict", "--prompt", str(out / "best"), "--text", "x", "--adapter", "dora=off"])
        == 2
    )
    assert "no adapter 'dora'" in capsys.readouterr().err


def test_lora_targets_that_match_nothing_are_a_config_error(tiny_models):
    backbone = load_backbone(str(tiny_models["gpt2"]))
    settings = LoraSettings(enabled=True, target_modules=["no_such_layer"])
    with pytest.raises(ConfigError, match="no_such_layer"):
        LoraTuner.create(settings, backbone)
