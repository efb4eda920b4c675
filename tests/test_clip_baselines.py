"""CLIP's baselines and CoOp's data protocol: zero-shot with templates, the linear probe as
a compare row, base / new class halves and K shots per class."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import class_folders, make_config, write_config

from softprompt.backbones.loading import load_backbone
from softprompt.commands.cli import main
from softprompt.config.run import ConfigError, build_config, load_config
from softprompt.data.few_shot import class_subset, few_shot, shots_for
from softprompt.data.records import VisionExample
from softprompt.data.splits import load_split
from softprompt.tasks.kinds import task_from_config
from softprompt.workflows.compare import parse_methods
from softprompt.workflows.linear_probe import linear_probe
from softprompt.workflows.report.baseline import run_baseline

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = ("ant", "bee", "cat", "dog")


def examples(per_class: int) -> list[VisionExample]:
    return [
        VisionExample(id=f"{c}{i}", image_path=f"{c}/{i}.png", label=c, target=c)
        for c in CLASSES
        for i in range(per_class)
    ]


def test_base_is_the_first_half_of_the_sorted_classes_rounded_up():
    assert class_subset(["e", "b", "d", "a", "c"], "base") == ["a", "b", "c"]
    assert class_subset(["e", "b", "d", "a", "c"], "new") == ["d", "e"]
    assert class_subset(["b", "a"], "all") == ["a", "b"]
    with pytest.raises(ValueError, match="subsample_classes"):
        class_subset(["a"], "novel")


def test_k_shots_per_class_are_drawn_with_the_seed():
    pool = examples(10)
    drawn = few_shot(pool, 3, seed=1)
    assert [sum(e.label == c for e in drawn) for c in CLASSES] == [3, 3, 3, 3]
    assert drawn == few_shot(pool, 3, seed=1) and drawn != few_shot(pool, 3, seed=2)
    assert [pool.index(e) for e in drawn] == sorted(pool.index(e) for e in drawn)  # in order
    assert few_shot(examples(2), 5, seed=0) == examples(2)  # fewer than K: all of them
    assert (shots_for("train", 16), shots_for("val", 16), shots_for("test", 16)) == (16, 4, None)
    assert shots_for("val", 2) == 2 and shots_for("train", None) is None


@pytest.mark.parametrize("bad", [["a photo"], ["{} and {}"], ["a {name}"], []])
def test_templates_need_one_placeholder(bad):
    with pytest.raises(ConfigError, match="task.templates"):
        build_config({"task": {"type": "classify", "templates": bad}})


def test_baselines_are_compare_methods():
    assert parse_methods("Zero-Shot, linear_probe,coop") == ["zero-shot", "linear-probe", "coop"]
    with pytest.raises(ConfigError, match="zero-shot, linear-probe, prompt"):
        parse_methods("probe")


def clip_config(tmp_path, model, name: str = "run", **data):
    folders = {split: class_folders(tmp_path / "data" / split, CLASSES, count)
               for split, count in (("train", 3), ("val", 2), ("test", 2))}  # fmt: skip
    raw = make_config(
        model, {**folders, **data}, tmp_path / name,
        task={"type": "classify", "templates": ["a house of a {}.", "the big {}."]},
        method={"coop": {"enabled": True, "n_ctx": 4}},
        batch_size=4, max_steps=3, logging_steps=1, metric_for_best_model="eval_accuracy",
    )  # fmt: skip
    return write_config(tmp_path / f"{name}.yaml", raw)


def test_zero_shot_clip_scores_the_averaged_templates(tiny_contrastive, tmp_path):
    config = load_config(clip_config(tmp_path, tiny_contrastive["clip"]))
    results = run_baseline(config, splits=("val",), output_dir=tmp_path / "zero")
    records = [json.loads(x) for x in (tmp_path / "zero" / "predictions.val.jsonl").open()]
    backbone = load_backbone(str(tiny_contrastive["clip"]))
    val = load_split(config, "val")
    backbone.bind_task(task_from_config(config, list(CLASSES)))
    with torch.no_grad():
        logits = backbone.score_matrix(backbone.image_features([e.image_path for e in val]),
                                       CLASSES)  # fmt: skip
    expected = torch.softmax(logits, -1)
    got = torch.tensor([[r["probabilities"][c] for c in CLASSES] for r in records])
    torch.testing.assert_close(got, expected.float(), atol=1e-6, rtol=0)
    assert results["val"]["num_samples"] == len(val) == 8


def test_compare_sets_the_baselines_beside_coop(tiny_contrastive, tmp_path, capsys):
    config = clip_config(tmp_path, tiny_contrastive["clip"])
    out = tmp_path / "compare"
    code = main(["compare", str(config), "--methods", "zero-shot,linear-probe,coop",
                 "--output-dir", str(out)])  # fmt: skip
    assert code == 0
    rows = {r["method"]: r for r in json.loads((out / "compare.json").read_text())}
    assert list(rows) == ["zero-shot", "linear-probe", "coop"]
    assert rows["zero-shot"]["trainable_parameters"] == 0
    probe = json.loads((out / "linear-probe" / "all_results.json").read_text())
    assert rows["linear-probe"]["test"]["test_accuracy"] == probe["test_accuracy"]
    assert rows["linear-probe"]["best_metric"] == probe["val_accuracy"]
    assert rows["coop"]["best_step"] is not None
    table = (out / "compare.md").read_text()
    assert "| zero-shot | 0 | 0.000 | - | - |" in table


def test_the_linear_probe_needs_clip_and_a_classify_task(tiny_models, tmp_path):
    config = load_config(clip_config(tmp_path, tiny_models["gpt2"]))
    with pytest.raises(ConfigError, match="fits on CLIP / SigLIP image features"):
        linear_probe(config)
    config.task.type = "caption"
    with pytest.raises(ConfigError, match="needs task.type: classify"):
        linear_probe(config)


def test_a_split_without_the_asked_classes_is_named(tiny_contrastive, tmp_path):
    config = load_config(clip_config(tmp_path, tiny_contrastive["clip"]))
    two = tmp_path / "two"
    class_folders(two, ("ant", "bee"), 2)
    config.data.test_path = str(two)
    config.data.subsample_classes = "new"
    with pytest.raises(ConfigError, match="the test data has no new classes"):
        load_split(config, "test")
