"""The seed jobs' configs (configs/seed00*.yaml, and configs/clip_coop_*.yaml: seed 000's
task and CoOp's few-shot protocol on CLIP) train for two steps.

Each config is loaded as shipped; then only what a test machine cannot have is swapped:
the hub model for a tiny one of the same family, the data for a few generated records
in the config's own format and field names, and the run length. Everything else (task,
labels, template, prompt and LoRA settings, QLoRA's 4 bits, dtype) stays as written.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import class_folders, colour_images, image_folders, toy_task, write_jsonl
from safetensors.torch import load_file

from softprompt.config.run import RunConfig, build_config, load_config
from softprompt.train.loop import train

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SEEDS = (
    "seed000_instructblip_ai_detection",
    "seed001_clip_gpt2_caption",
    "seed002_flan_t5_prompt_on_lora",
    "seed003_t5_summarization",
    "seed004_blip2_qlora_vqav2",
    "clip_coop_ai_detection",
    "clip_coop_fewshot",
)

# Tiny models on a shared 2-core machine run fastest on one thread (see conftest).
pytestmark = pytest.mark.usefixtures("one_thread")


def with_changes(config: RunConfig, changes: dict[str, Any]) -> RunConfig:
    """The config with dotted keys replaced, validated again as a whole."""
    raw = config.model_dump(mode="json")
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[leaf] = value
    return build_config(raw, source="<test>")


def caption_pairs(path: Path, image_field: str, text_field: str) -> Path:
    """A JSON array of image-text pairs (seed 001's format), images beside it."""
    images = colour_images(path.parent, per_colour=2)
    rows = [
        {image_field: p.name, text_field: f"a {colour} square"}
        for colour, paths in images.items()
        for p in paths
    ]
    # One record per line, as in the seed: records without ids are named by their line.
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return path


def vqav2_files(folder: Path, subtype: str) -> Path:
    """VQAv2 questions + annotations files with COCO-named images beside them."""
    images = colour_images(folder / "raw", per_colour=2)
    questions, annotations = [], []
    for n, (colour, path) in enumerate((c, p) for c, ps in images.items() for p in ps):
        image_id, qid = 100 + n, 1000 + n
        shutil.copy(path, folder / f"COCO_{subtype}_{image_id:012d}.jpg")
        questions.append({"image_id": image_id, "question": "what colour?", "question_id": qid})
        answers = [{"answer": colour, "answer_id": i + 1} for i in range(10)]
        annotations.append(
            {"question_id": qid, "image_id": image_id, "answers": answers,
             "multiple_choice_answer": colour}
        )  # fmt: skip
    stem = f"v2_OpenEnded_mscoco_{subtype}_questions.json"
    doc = {"data_subtype": subtype, "questions": questions}
    (folder / stem).write_text(json.dumps(doc), encoding="utf-8")
    notes = {"annotations": annotations}
    (folder / f"v2_mscoco_{subtype}_annotations.json").write_text(json.dumps(notes))
    return folder / stem


def text_rows(path: Path, config: RunConfig, seed: int) -> str:
    """toy_task records under the config's own input/target field names."""
    d = config.data
    rows = [
        {d.input_field: r["input"], d.target_field: r["target"]} for r in toy_task(6, seed=seed)
    ]
    return str(write_jsonl(path, rows))


def seed_changes(name: str, config: RunConfig, tmp: Path, models: dict) -> dict[str, Any]:
    """Tiny model and data for one seed config (and, for seed 002, its frozen LoRA).

    Args:
        models: the session's "text" (tiny_models), "vlm" (tiny_vlms) and "clip" (tiny_clip).
    """
    tiny_models, tiny_vlms = models["text"], models["vlm"]
    if name.startswith("clip_coop"):
        classes = sorted(config.task.labels or ["ant", "bee", "cat", "dog"])
        return {
            "model.name_or_path": str(models["contrastive"]["clip"]),
            **{
                f"data.{key}": str(class_folders(tmp / "images" / key, classes))
                for key in ("train_path", "val_test_path", "test_path")
                if getattr(config.data, key)
            },
        }
    if name.startswith("seed000"):
        classes = sorted(config.task.labels)  # ai, nature
        return {
            "model.name_or_path": str(tiny_vlms["instructblip-t5"]),
            "data.train_path": str(image_folders(tmp / "ai_detection" / "train", 2, classes)),
            "data.val_test_path": str(image_folders(tmp / "ai_detection" / "val", 2, classes)),
        }
    if name.startswith("seed001"):
        fields, gpt2 = (config.data.image_field, config.data.text_field), str(tiny_models["gpt2"])
        return {
            "model.name_or_path": gpt2,
            "model.language_model": gpt2,
            "model.vision_encoder": str(models["clip"]),
            "data.train_path": str(caption_pairs(tmp / "train" / "train.json", *fields)),
            "data.val_test_path": str(caption_pairs(tmp / "val" / "val.json", *fields)),
        }
    if name.startswith("seed004"):
        (tmp / "train2014").mkdir()
        (tmp / "val2014").mkdir()
        return {
            "model.name_or_path": str(tiny_vlms["blip2-opt"]),
            "data.train_path": str(vqav2_files(tmp / "train2014", "train2014")),
            "data.val_test_path": str(vqav2_files(tmp / "val2014", "val2014")),
            "training.metric_for_best_model": "eval_loss",  # VQA accuracy needs generation
        }
    changes = {
        "model.name_or_path": str(tiny_models["t5"]),
        "data.train_path": text_rows(tmp / "data" / "train.jsonl", config, seed=1),
        "data.val_test_path": text_rows(tmp / "data" / "val.jsonl", config, seed=2),
        "training.metric_for_best_model": "eval_loss",  # BLEU / ROUGE-L need generation
    }
    if config.data.test_path:
        changes["data.test_path"] = text_rows(tmp / "data" / "test.jsonl", config, seed=3)
    if name.startswith("seed002"):
        # The frozen LoRA the prompt trains on: first a LoRA-only run of the same setup.
        lora_run = tmp / "flan_t5_lora"
        lora_only = {
            **changes,
            **short_run(lora_run),
            "method.prompt_tuning.enabled": False,
            "method.lora.path": None,
            "method.lora.trainable": True,
        }
        results = train(with_changes(config, lora_only))
        assert results["global_step"] == 2 and results["methods"] == ["lora"]
        changes["method.lora.path"] = str(lora_run / "best" / "lora")
    return changes


def short_run(out: Path) -> dict[str, Any]:
    return {
        "training.output_dir": str(out),
        "training.max_steps": 2,
        "training.batch_size": 2,
        "training.eval_batch_size": 2,
        "training.gradient_accumulation_steps": 1,
        "training.logging_steps": 1,
        "training.eval_steps": 2,
        "training.eval_generate": False,
        "data.feature_cache": "memory",
        "task.max_new_tokens": 4,
    }


@pytest.mark.parametrize("name", SEEDS)
def test_seed_config_trains_two_steps(
    name, tiny_models, tiny_vlms, tiny_clip, tiny_contrastive, tmp_path
):
    path = CONFIGS / f"{name}.yaml"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == f"# softprompt train configs/{name}.yaml"
    assert lines[1].startswith("# ") and len(lines[1]) > 10
    config = load_config(path)
    shipped = config.model_copy(deep=True)
    out = tmp_path / "run"
    models = {"text": tiny_models, "vlm": tiny_vlms, "clip": tiny_clip,
              "contrastive": tiny_contrastive}  # fmt: skip
    changes = seed_changes(name, config, tmp_path, models)
    config = with_changes(config, {**changes, **short_run(out)})
    # What the test keeps as written: the method settings (QLoRA's 4 bits included).
    assert config.method.enabled_methods() == shipped.method.enabled_methods()
    assert config.method.lora.quantization_bit == shipped.method.lora.quantization_bit
    assert config.model.dtype == shipped.model.dtype

    results = train(config)

    assert results["global_step"] == 2
    assert (out / "best").is_dir() and any((out / "best").iterdir())
    losses = [e["eval_loss"] for e in results["evaluations"]]
    assert losses and all(math.isfinite(v) for v in losses), results["evaluations"]
    assert results["methods"] == shipped.method.enabled_methods()
    by_method = results["trainable_parameters_by_method"]
    if name.startswith("seed002"):  # the LoRA stays frozen: only the prompt trains
        assert by_method["lora"] == 0 and by_method["prompt_tuning"] > 0
    if name.startswith("seed003"):  # the test split is scored with the best prompt
        assert "test_rougeL" in results
    if name == "clip_coop_fewshot":  # base-to-novel: the new classes are scored too
        assert results["test_new_labels"] == ["cat", "dog"] and "test_hm" in results
    if name.startswith("seed004"):  # QLoRA: gradients reached LoRA through 4-bit layers
        lora = load_file(str(out / "best" / "lora" / "adapter_model.safetensors"))
        assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)
