"""Image tasks end to end through the CLI: train from YAML, eval, predict to JSON."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import colour_images, image_folders, make_config, write_config
from safetensors.torch import load_file

from softprompt.commands.cli import main

# Tiny models on a shared 2-core machine run fastest on one thread (see conftest).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """train/{red,blue} and val/{red,blue}, plus one corrupt file in train/red."""
    root = tmp_path_factory.mktemp("folders")
    image_folders(root / "train", per_class=6)
    image_folders(root / "val", per_class=3)
    (root / "train" / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def test_classify_with_composed_clip_gpt2(tiny_models, tiny_clip, folders, tmp_path, capsys):
    out = tmp_path / "run"
    raw = make_config(
        tiny_models["gpt2"],
        {"train": folders / "train", "val": folders / "val"},
        out,
        model_options={"vision_encoder": str(tiny_clip)},
        task={
            "type": "classify",
            "instruction": "Which colour?",
            "labels": {"red": "red", "blue": "blue"},
            "positive_label": "red",
        },
        epochs=3,
        batch_size=4,
        learning_rate=0.3,
        projection_learning_rate=0.01,
        metric_for_best_model="eval_accuracy",
    )
    config = write_config(tmp_path / "config.yaml", raw)
    assert main(["train", str(config), "--no-progress"]) == 0
    results = json.loads((out / "all_results.json").read_text())
    assert results["skipped_inputs"] == 1
    assert "broken.png" in (out / "skipped_inputs.json").read_text()
    evals = results["evaluations"]
    assert {"eval_accuracy", "eval_f1_macro", "eval_roc_auc", "eval_confusion_matrix"} <= set(
        evals[-1]
    )
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    saved = load_file(str(out / "best" / "adapter_model.safetensors"))
    assert any(k.startswith("projection.") for k in saved)
    meta = json.loads((out / "best" / "softprompt.json").read_text())
    assert meta["task"]["vision_task"]["label_words"] == {"blue": "blue", "red": "red"}

    # Folder prediction to JSON with the seed script's flag spellings; a corrupt file
    # becomes an error record, the others get probabilities.
    predict_dir = tmp_path / "predict"
    shutil.copytree(folders / "val", predict_dir)
    (predict_dir / "zero.jpg").write_bytes(b"")
    target = tmp_path / "inference_results.json"
    capsys.readouterr()
    argv = ["predict", "--model_path", str(out / "best"), "--image_dir", str(predict_dir)]
    assert main([*argv, "--output_file", str(target), "--no-progress"]) == 0
    records = json.loads(target.read_text())
    assert len(records) == 7
    errors = [r for r in records if "error" in r]
    assert len(errors) == 1 and "zero.jpg" in errors[0]["image"]
    good = [r for r in records if "error" not in r]
    assert all(set(r["probabilities"]) == {"red", "blue"} for r in good)
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in good)
    assert '"errors": 1' in capsys.readouterr().err

    # Batched predictions equal one-at-a-time predictions.
    single = tmp_path / "single.json"
    assert main([*argv, "--output", str(single), "--batch-size", "1", "--no-progress"]) == 0
    one = json.loads(single.read_text())
    for a, b in zip(records, one, strict=True):
        assert a.get("prediction") == b.get("prediction")
        for name, p in a.get("probabilities", {}).items():
            assert abs(p - b["probabilities"][name]) < 1e-4

    # Zero-shot evaluation of the bare model works too (no --prompt).
    capsys.readouterr()
    assert main(["eval", str(config), "--split", "val", "--no-progress"]) == 0
    assert "accuracy" in json.loads(capsys.readouterr().out)["val"]


def pairs_file(path, images, key="text", extra=None):
    rows = []
    for colour, paths in images.items():
        for p in paths:
            row = {"image_path": p.name, key: f"a {colour} square"}
            row.update(extra or {})
            rows.append(row)
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.mark.parametrize("kind", ["instructblip-opt", "blip2-t5"])
def test_caption_and_vqa_with_blip_models(kind, tiny_vlms, tmp_path, capsys):
    model = tiny_vlms[kind]
    images = colour_images(tmp_path / "img", per_colour=3)
    vqa = kind.startswith("blip2")
    data = pairs_file(
        tmp_path / "img" / "train.jsonl",
        images,
        key="answer" if vqa else "text",
        extra={"question": "what colour?"} if vqa else None,
    )
    prompt_cfg = {"num_virtual_tokens": 4, "placement": "after_image"}
    if kind.startswith("instructblip"):
        prompt_cfg["qformer_prompt_tokens"] = 2
    out = tmp_path / "run"
    raw = make_config(
        model,
        {"train": data, "val": data},
        out,
        method={"prompt_tuning": prompt_cfg},
        task={"type": "vqa" if vqa else "caption", "max_new_tokens": 4},
        epochs=4,
        batch_size=3,
        learning_rate=0.3,
    )
    config = write_config(tmp_path / "config.yaml", raw)
    assert main(["train", str(config), "--no-progress"]) == 0
    evals = json.loads((out / "all_results.json").read_text())["evaluations"]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    metric = "eval_exact_match" if vqa else "eval_cider"
    assert metric in evals[-1]
    saved = load_file(str(out / "best" / "adapter_model.safetensors"))
    assert any(k.startswith("qformer_prompt") for k in saved) == (not vqa)

    # Resuming from the last checkpoint continues with the Q-Former prompt in place.
    assert (
        main(["train", str(config), "training.epochs=5", "--resume", "auto", "--no-progress"]) == 0
    )

    capsys.readouterr()
    argv = ["predict", "--prompt", str(out / "best"), "--image", str(images["red"][0])]
    if vqa:
        argv += ["--question", "what colour?"]
    assert main([*argv, "--no-progress"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert isinstance(record["prediction"], str) and "error" not in record


@pytest.mark.slow
def test_embedded_vlm_trains_and_predicts_on_easy_vqa(tmp_path, capsys):
    """The `make demo` model and data for a few steps: real weights, real images."""
    from pathlib import Path

    config = Path(__file__).resolve().parent.parent / "configs" / "easyvqa_effnet_smollm2.yaml"
    out = tmp_path / "run"
    overrides = [
        f"training.output_dir={out}",
        "training.max_steps=3",
        "training.batch_size=4",
        "data.max_train_samples=24",
        "data.max_eval_samples=8",
    ]
    assert main(["train", str(config), *overrides, "--no-progress"]) == 0
    results = json.loads((out / "all_results.json").read_text())
    assert results["global_step"] == 3 and "test_exact_match" in results
    capsys.readouterr()
    image = json.loads((out / "best" / "softprompt.json").read_text())
    assert image["task"]["vision_task"]["type"] == "vqa"
    from softprompt.data.vqa import load_easy_vqa

    first = load_easy_vqa("test")[0]
    argv = ["predict", "--prompt", str(out / "best"), "--image", first.image_path]
    assert main([*argv, "--question", first.text, "--no-progress"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert record["question"] == first.text and isinstance(record["prediction"], str)
