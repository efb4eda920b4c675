"""`softprompt inspect`: nearest vocabulary tokens, norms and drift of a prompt's tokens."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from helpers import colour_images, make_config, prompt_method, write_config

from softprompt.artifacts.prompt_dir import PromptLoadError, fingerprint
from softprompt.backbones.loading import load_backbone
from softprompt.commands.cli import main
from softprompt.train.run_files import INITIAL_PROMPT_FILE, save_initial_prompt
from softprompt.tuners.prompt_tuning.config import PromptTuningConfig
from softprompt.tuners.prompt_tuning.tuner import PromptTuner
from softprompt.tuners.tuner_set import TunerSet
from softprompt.workflows.inspect_prompt import format_report, inspect_prompt

pytestmark = pytest.mark.usefixtures("one_thread")

INIT_TEXT = "red cat"
TOKENS = 10  # longer than the text: PEFT's TEXT init repeats it


@pytest.fixture
def untrained(tiny_models, tmp_path):
    """RUN/best: a TEXT-initialised prompt never trained, and RUN/initial_prompt.safetensors."""
    backbone = load_backbone(str(tiny_models["gpt2"]))
    config = PromptTuningConfig(num_virtual_tokens=TOKENS, init_method="TEXT", init_text=INIT_TEXT)
    tuners = TunerSet([PromptTuner.for_backbone(config, backbone, 0.1, seed=0)], backbone)
    context = {
        "family": backbone.family,
        "base_model": str(tiny_models["gpt2"]),
        "fingerprint": fingerprint(backbone.word_embeddings(), backbone.tokenizer),
        "task": {"type": "text2text"},
    }
    run = tmp_path / "run"
    tuners.save(run / "best", context)
    assert save_initial_prompt(run, tuners, context) == run / INITIAL_PROMPT_FILE
    return run, backbone


def test_text_init_tokens_are_the_nearest_and_drift_is_zero(untrained):
    run, backbone = untrained
    report = inspect_prompt(run / "best", top_k=3, backbone=backbone)
    ids = backbone.tokenizer(INIT_TEXT, add_special_tokens=False)["input_ids"]
    expected = (ids * TOKENS)[:TOKENS]
    assert len(ids) < TOKENS  # the repetition is checked too
    assert [t["nearest"][0]["id"] for t in report["tokens"]] == expected
    assert [t["nearest"][0]["token"] for t in report["tokens"]] == [
        backbone.tokenizer.decode([i]) for i in expected
    ]
    assert all(abs(t["nearest"][0]["cosine"] - 1) < 1e-5 for t in report["tokens"])
    assert all(len(t["nearest"]) == 3 for t in report["tokens"])
    assert report["initial_prompt"] == str(run / INITIAL_PROMPT_FILE)
    assert all(t["drift"] == pytest.approx(0, abs=1e-6) for t in report["tokens"])
    assert report["mean_drift"] == pytest.approx(0, abs=1e-6)
    # A copied-in vocabulary row has exactly that row's norm.
    rows = backbone.word_embeddings().detach().float()
    first = report["tokens"][0]
    assert first["norm"] == pytest.approx(float(rows[expected[0]].norm()), rel=1e-5)
    norms = rows.norm(dim=1)
    assert report["vocab_norm"]["mean"] == pytest.approx(float(norms.mean()), rel=1e-5)
    z = (first["norm"] - float(norms.mean())) / float(norms.std())
    assert first["norm_zscore"] == pytest.approx(z, rel=1e-4)
    assert 0 <= first["norm_percentile"] <= 100
    assert "drift" in format_report(report)


def test_cli_writes_json_and_loads_the_recorded_model(untrained, tmp_path, capsys):
    run, backbone = untrained
    out = tmp_path / "inspect.json"
    assert main(["inspect", str(run / "best"), "--top-k", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "nearest" in printed and "vocabulary norms" in printed
    report = json.loads(out.read_text())
    ids = backbone.tokenizer(INIT_TEXT, add_special_tokens=False)["input_ids"]
    assert report["tokens"][0]["nearest"][0]["id"] == ids[0]
    assert report["tokens"][0]["drift"] == 0.0
    assert report["num_virtual_tokens"] == TOKENS and report["task"] is None


def test_prompt_copied_elsewhere_has_no_drift(untrained, tmp_path):
    run, backbone = untrained
    shutil.copytree(run / "best", tmp_path / "copy" / "prompt")
    report = inspect_prompt(tmp_path / "copy" / "prompt", backbone=backbone)
    assert report["initial_prompt"] is None and report["tokens"][0]["drift"] is None
    assert "not kept" in format_report(report)


def test_wrong_directory_is_a_clear_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "prompt directory not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["inspect", str(tmp_path / "empty")]) == 2
    assert "is not a prompt directory" in capsys.readouterr().err
    with pytest.raises(PromptLoadError, match="not found"):
        inspect_prompt(tmp_path / "missing")


def test_trained_run_keeps_its_start_and_drifts(tiny_models, toy_data, tmp_path):
    """Training writes RUN/initial_prompt.safetensors once; inspect finds it from best/."""
    out = tmp_path / "run"
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": str(tiny_models["gpt2"])},
                "method": {
                    "prompt_tuning": {
                        "num_virtual_tokens": 4,
                        "init_method": "TEXT",
                        "init_text": "red cat",
                    }
                },
                "data": {"train_path": str(toy_data["train"])},
                "training": {"output_dir": str(out), "max_steps": 2, "learning_rate": 0.5},
            }
        )
    )
    assert main(["train", str(config), "--no-progress"]) == 0
    initial = out / INITIAL_PROMPT_FILE
    assert initial.is_file()
    report = inspect_prompt(out / "best", top_k=1)
    assert report["initial_prompt"] == str(initial)
    assert report["mean_drift"] > 0
    assert all(0 < t["drift_cosine"] <= 1 + 1e-6 for t in report["tokens"])
    # A resumed run keeps the file of its first start.
    before = initial.read_bytes()
    argv = ["train", str(config), "training.max_steps=3", "--resume", "auto", "--no-progress"]
    assert main(argv) == 0
    assert initial.read_bytes() == before
    # The checkpoints find it too.
    checkpoint = sorted(out.glob("checkpoint-*"))[-1]
    assert inspect_prompt(checkpoint, top_k=1)["initial_prompt"] == str(initial)


def test_vlm_prompt_is_read_in_the_language_models_space(tiny_models, tiny_clip, tmp_path):
    """A composed (CLIP -> GPT-2) prompt: nearest tokens come from GPT-2's vocabulary."""
    images = colour_images(tmp_path / "img", per_colour=2)
    rows = [
        {"image_path": str(p), "text": f"a {colour} square"}
        for colour, paths in images.items()
        for p in paths
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    method = prompt_method(num_virtual_tokens=3, init_method="TEXT", init_text="blue dog")
    raw = make_config(
        tiny_models["gpt2"],
        {"train": data},
        out,
        method=method,
        task={"type": "caption", "max_new_tokens": 2},
        model_options={"vision_encoder": str(tiny_clip)},
        max_steps=1,
        learning_rate=1e-6,
    )
    config = write_config(tmp_path / "config.yaml", raw)
    assert main(["train", str(config), "--no-progress"]) == 0
    report = inspect_prompt(out / "best", top_k=1)
    gpt2 = load_backbone(str(tiny_models["gpt2"]))
    ids = gpt2.tokenizer("blue dog", add_special_tokens=False)["input_ids"]
    assert report["vocab_size"] == len(gpt2.tokenizer)
    # One tiny step barely moves the prompt: still nearest to its init words.
    assert [t["nearest"][0]["id"] for t in report["tokens"]] == (ids * 3)[:3]
    assert report["tokens"][0]["drift"] == pytest.approx(0, abs=1e-3)
    assert torch.isfinite(torch.tensor(report["mean_drift"]))


def test_bank_prompts_are_inspected_by_task(tiny_models, tmp_path, capsys):
    from helpers import multitask_config

    config = multitask_config(tmp_path, tiny_models["llama"])
    assert main(["train", str(config), "--no-progress"]) == 0
    best = tmp_path / "run" / "best"
    first = inspect_prompt(best, top_k=1)
    assert first["tasks"] == ["colour", "count"] and first["task"] == "colour"
    assert first["num_virtual_tokens"] == 3
    count = inspect_prompt(best, top_k=1, task="count")
    assert count["num_virtual_tokens"] == 5 and count["mean_drift"] > 0
    assert count["initial_prompt"] == str(tmp_path / "run" / INITIAL_PROMPT_FILE)
    # A member's own directory finds its start too.
    assert inspect_prompt(best / "count", top_k=1)["mean_drift"] == count["mean_drift"]
    with pytest.raises(PromptLoadError, match="colour, count"):
        inspect_prompt(best, task="size")
    assert main(["inspect", str(best), "--task", "count"]) == 0
    assert "prompt 'count' of colour, count" in capsys.readouterr().out
