"""The reshaped engine seen from outside: per-row prompts, caption prediction from a file,
merged export, and the method table."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import colour_images, make_config, write_config
from transformers import AutoModelForCausalLM

from softprompt.backbones.base import EncodeSettings
from softprompt.backbones.loading import load_backbone
from softprompt.commands.cli import main
from softprompt.data.records import TextExample
from softprompt.inference.loaded import LoadedModel
from softprompt.tuners.base import PromptInput

pytestmark = pytest.mark.usefixtures("one_thread")


def text_config(tmp_path, model_dir, data, out, **method):
    raw = make_config(
        model_dir,
        data,
        out,
        method=method or None,
        task={"max_new_tokens": 3},
        max_steps=2,
        batch_size=8,
        eval_generate=False,
        learning_rate=0.1,
    )
    return write_config(tmp_path / "config.yaml", raw)


def test_rows_of_one_batch_use_different_prompts(tiny_models):
    backbone = load_backbone(str(tiny_models["llama"]))
    backbone.model.eval()
    rows = [TextExample(id=str(i), input=f"cat dog {i}", target="red") for i in range(4)]
    batch = backbone.collate(rows, EncodeSettings(), with_targets=True)
    table = torch.randn(2, 3, backbone.hidden_size) * 0.05
    ids = torch.tensor([0, 1, 1, 0])
    mixed = PromptInput(table, ids, torch.ones(2, 3, dtype=torch.long))
    assert not mixed.is_single
    with torch.no_grad():
        together = backbone.sequence_logprobs(batch, mixed)
        for prompt_id in (0, 1):
            alone = backbone.sequence_logprobs(batch, PromptInput.single(table[prompt_id], 4))
            chosen = ids == prompt_id
            torch.testing.assert_close(together[chosen], alone[chosen], rtol=1e-5, atol=1e-5)


def test_caption_prompt_predicts_from_an_image_text_file(tiny_vlms, tmp_path, capsys):
    model = tiny_vlms["blip2-t5"]
    images = colour_images(tmp_path / "img", per_colour=2)
    rows = [
        {"image_path": str(p), "text": f"a {colour} square"}
        for colour, paths in images.items()
        for p in paths
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    raw = make_config(
        model,
        {"train": data, "validation": False},
        out,
        method={"prompt_tuning": {"num_virtual_tokens": 2}},
        task={"type": "caption", "max_new_tokens": 3},
        max_steps=1,
        batch_size=4,
    )
    config = write_config(tmp_path / "config.yaml", raw)
    assert main(["train", str(config), "--no-progress"]) == 0
    capsys.readouterr()
    argv = ["predict", "--prompt", str(out / "best"), "--input", str(data), "--no-progress"]
    assert main(argv) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == len(rows)
    assert all(isinstance(r["prediction"], str) and "error" not in r for r in records)


def test_export_merge_writes_a_loadable_model(tiny_models, toy_data, tmp_path):
    out = tmp_path / "run"
    config = text_config(
        tmp_path,
        tiny_models["llama"],
        toy_data,
        out,
        prompt_tuning={"enabled": False},
        lora={"enabled": True, "r": 4, "learning_rate": 0.05},
    )
    assert main(["train", str(config), "--no-progress"]) == 0
    merged = tmp_path / "merged"
    assert main(["export", str(out / "best"), "--merge", "--output", str(merged)]) == 0
    plain = AutoModelForCausalLM.from_pretrained(str(merged)).eval()
    assert not any("lora" in name for name, _ in plain.named_parameters())
    loaded = LoadedModel.from_bundle(out / "best", device="cpu")
    ids = torch.tensor([[5, 9, 14, 3]])
    with torch.no_grad():
        torch.testing.assert_close(
            plain(input_ids=ids).logits,
            loaded.backbone.model(input_ids=ids).logits,
            rtol=1e-4,
            atol=1e-4,
        )
    assert main(["export", str(out / "best"), "--output", str(merged)]) == 2  # --merge needed


def test_compare_writes_the_method_table(tiny_models, toy_data, tmp_path, capsys):
    config = text_config(tmp_path, tiny_models["gpt2"], toy_data, tmp_path / "unused")
    table = tmp_path / "table"
    argv = ["compare", str(config), "--methods", "prompt,lora", "--output-dir", str(table)]
    assert main(argv) == 0
    rows = json.loads((table / "compare.json").read_text())
    assert [r["method"] for r in rows] == ["prompt", "lora"]
    assert rows[0]["trainable_parameters"] == 4 * 32
    assert rows[1]["trainable_parameters"] > rows[0]["trainable_parameters"]
    assert all(r["peak_memory_mb"] > 0 and r["best_step"] == 2 for r in rows)
    assert "| prompt |" in (table / "compare.md").read_text()
    # Finished methods are not trained again.
    stamp = (table / "prompt" / "all_results.json").stat().st_mtime_ns
    assert main(argv) == 0
    assert (table / "prompt" / "all_results.json").stat().st_mtime_ns == stamp
    assert main(["compare", str(config), "--methods", "prompt,dora"]) == 2


def test_eval_and_predict_use_the_machines_accelerator(monkeypatch):
    from softprompt.inference import loaded as loaded_module

    accelerator = torch.accelerator
    monkeypatch.setattr(accelerator, "is_available", lambda: True)
    monkeypatch.setattr(accelerator, "current_accelerator", lambda: torch.device("cuda"))
    assert loaded_module.default_device() == torch.device("cuda")
    monkeypatch.setattr(accelerator, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loaded_module.default_device() == torch.device("cpu")


def test_predict_with_the_bare_model(tiny_models, capsys):
    argv = ["predict", "--model", str(tiny_models["gpt2"]), "--text", "cat red", "--no-progress"]
    assert main([*argv, "--max-new-tokens", "2"]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    assert record["input"] == "cat red" and isinstance(record["prediction"], str)
    assert main(["predict", "--text", "x"]) == 2
    assert "--model for the bare model" in capsys.readouterr().err
