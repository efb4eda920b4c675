"""The `clip` family and CoOp / CoCoOp on it, through the same `from_pretrained` path a
hub id takes (tiny CLIPModel and SiglipModel checkpoints saved in a temporary folder).

Exactness, not accuracy: untrained CoOp is zero-shot CLIP with the template its context
spells, untrained CoCoOp with a zero last meta-net layer is CoOp, and a trained prompt
saves, loads, resumes and predicts to the bit.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import image_folders, make_config, write_config
from torch.testing import assert_close

from softprompt.backbones.loading import load_backbone
from softprompt.config.run import ConfigError, build_config, load_config
from softprompt.inference.loaded import LoadedModel
from softprompt.tasks.kinds import VisionTask
from softprompt.train.loop import train
from softprompt.tuners.cocoop.tuner import build_cocoop
from softprompt.tuners.coop.tuner import build_coop

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ("red cat", "dog", "blue_bird")
# One token a word in the tiny vocabularies, as "a photo of a" is in CLIP's.
CONTEXT = "a house of a"
TEMPLATE = "a house of a {}."


def classify(names=NAMES, templates=(TEMPLATE,)) -> VisionTask:
    words = {name: name for name in names}
    return VisionTask(type="classify", template="{instruction}", classes=list(names),
                      label_words=words, templates=list(templates))  # fmt: skip


def method_config(**method) -> object:
    return build_config({"model": {"name_or_path": "unused"}, "method": method})


def bound(tiny_contrastive, kind: str, task: VisionTask | None = None):
    backbone = load_backbone(str(tiny_contrastive[kind]))
    backbone.bind_task(task or classify())
    return backbone


def scores(backbone, images: torch.Tensor, names=NAMES) -> torch.Tensor:
    with torch.no_grad():
        return backbone.score_matrix(images, tuple(names))


def test_the_family_is_detected_and_refuses_what_it_cannot_do(tiny_contrastive):
    for kind in ("clip", "siglip"):
        backbone = load_backbone(str(tiny_contrastive[kind]))
        assert backbone.family == "clip" and backbone.model.config.model_type == kind
    with pytest.raises(Exception, match="generates no text"):
        backbone.generate({}, None, 4)
    with pytest.raises(Exception, match="classifies images"):
        backbone.bind_task(VisionTask(type="caption", template="{instruction}"))


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_untrained_coop_is_zero_shot_with_its_template(tiny_contrastive, kind):
    backbone = bound(tiny_contrastive, kind)
    images = torch.randn(5, backbone.feature_dim)
    zero_shot = scores(backbone, images)
    tuner = build_coop(method_config(coop={"enabled": True, "ctx_init": CONTEXT}), backbone)
    spelled = backbone.tokenizer(CONTEXT, add_special_tokens=False).input_ids
    assert tuner.learner.n_ctx == len(spelled)  # CTX_INIT's token count sets M
    assert_close(scores(backbone, images), zero_shot)
    # Switched off, the templates score again; the learned context is kept.
    tuner.set_enabled(False)
    assert backbone.class_prompts is None
    tuner.set_enabled(True)
    assert backbone.class_prompts is tuner


@pytest.mark.parametrize(
    "position,template",
    [("end", "a house of a {}."), ("middle", "a house {} of a."), ("front", "{} a house of a.")],
)
def test_every_position_and_per_class_contexts_start_as_their_template(
    tiny_contrastive, position, template
):
    backbone = bound(tiny_contrastive, "clip", classify(templates=(template,)))
    images = torch.randn(4, backbone.feature_dim)
    zero_shot = scores(backbone, images)
    for class_specific in (False, True):
        settings = {"enabled": True, "ctx_init": CONTEXT, "class_token_position": position,
                    "class_specific": class_specific}  # fmt: skip
        tuner = build_coop(method_config(coop=settings), backbone)
        assert tuner.learner.class_specific is class_specific
        assert_close(scores(backbone, images), zero_shot)


def test_templates_are_averaged_as_clip_does(tiny_contrastive):
    two = ("a house of a {}.", "the big {}.")
    backbone = bound(tiny_contrastive, "clip", classify(templates=two))
    images = torch.randn(3, backbone.feature_dim)
    features = []
    for template in two:
        texts = [template.format(n.replace("_", " ")) for n in NAMES]
        ids = backbone.tokenizer(texts, return_tensors="pt", padding=True).input_ids
        out = backbone.model.get_text_features(input_ids=ids)
        out = out if isinstance(out, torch.Tensor) else out.pooler_output
        features.append(out / out.norm(dim=-1, keepdim=True))
    mean = (features[0] + features[1]) / 2
    unit = images / images.norm(dim=-1, keepdim=True)
    expected = (
        backbone.model.logit_scale.exp() * unit @ (mean / mean.norm(dim=-1, keepdim=True)).t()
    )
    assert_close(scores(backbone, images), expected.detach())


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_untrained_cocoop_with_a_zero_last_layer_is_coop(tiny_contrastive, kind):
    backbone = bound(tiny_contrastive, kind)
    images = torch.randn(4, backbone.feature_dim)
    build_coop(method_config(coop={"enabled": True, "ctx_init": CONTEXT}), backbone)
    coop = scores(backbone, images)
    tuner = build_cocoop(method_config(cocoop={"enabled": True, "ctx_init": CONTEXT}), backbone)
    assert sorted(tuner.modules()) == ["ctx", "meta_net"]
    assert tuner.net.linear1.out_features == max(1, backbone.feature_dim // 16)
    with torch.no_grad():
        tuner.net.linear2.weight.zero_()
        tuner.net.linear2.bias.zero_()
    assert_close(scores(backbone, images), coop)
    with torch.no_grad():  # a live meta-net makes each image's class features its own
        tuner.net.linear2.bias.normal_()
    assert not torch.allclose(scores(backbone, images), coop)


def test_clip_takes_class_prompt_methods_only(tiny_contrastive, tiny_models, tmp_path):
    data = {"train": image_folders(tmp_path / "train", 2)}
    task = {"type": "classify"}
    soft = make_config(tiny_contrastive["clip"], data, tmp_path / "a", task=task)
    with pytest.raises(ConfigError, match="trains method.coop or method.cocoop"):
        train(build_config(soft))
    coop = make_config(tiny_models["gpt2"], data, tmp_path / "b", task=task,
                       method={"coop": {"enabled": True}})  # fmt: skip
    with pytest.raises(ConfigError, match="method.coop is for clip models"):
        train(build_config(coop))
    # Enabling CoOp switches the default soft prompt off; saying so keeps it on.
    assert build_config({"method": {"coop": {"enabled": True}}}).method.enabled_methods() == [
        "coop"
    ]
    both = {"coop": {"enabled": True}, "prompt_tuning": {"enabled": True}}
    assert build_config({"method": both}).method.enabled_methods() == ["prompt_tuning", "coop"]


# ------------------------------------------------------------------ training end to end


def run_config(tiny_contrastive, tmp_path, name: str, kind: str = "clip", **method):
    data = {
        "train": image_folders(tmp_path / "data" / "train", 6),
        "val": image_folders(tmp_path / "data" / "val", 2),
        "test": image_folders(tmp_path / "data" / "test", 2),
    }
    raw = make_config(
        tiny_contrastive[kind], data, tmp_path / name, task={"type": "classify"},
        method=method or {"coop": {"enabled": True, "n_ctx": 4}},
        batch_size=4, epochs=3, learning_rate=0.05, lr_scheduler="constant",
        logging_steps=1, save_steps=3, save_total_limit=None,
        metric_for_best_model="eval_accuracy",
    )  # fmt: skip
    return write_config(tmp_path / f"{name}.yaml", raw)


def losses(run_dir) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if '"train"' in line]


@pytest.mark.parametrize("method", ["coop", "cocoop"])
def test_training_learns_resumes_exactly_and_round_trips(tiny_contrastive, tmp_path, method):
    settings = {method: {"enabled": True, "n_ctx": 4}}
    whole = load_config(run_config(tiny_contrastive, tmp_path, "whole", **settings))
    results = train(whole)
    train_losses = losses(tmp_path / "whole")
    assert sum(train_losses[-3:]) < sum(train_losses[:3]), train_losses
    assert results["methods"] == [method]
    parts = load_config(run_config(tiny_contrastive, tmp_path, "parts", **settings))
    parts.training.max_steps = 6
    train(parts)
    parts.training.max_steps = 9
    train(parts, resume="auto")
    assert len(losses(tmp_path / "parts")) == 9  # 6, then 3 more from checkpoint-6
    weights = f"{method}/class_prompt.safetensors"
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "whole" / "checkpoint-9" / weights))
    b = load_file(str(tmp_path / "parts" / "checkpoint-9" / weights))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # best/ loads and predicts what the run's own test evaluation recorded.
    loaded = LoadedModel.from_bundle(tmp_path / "whole" / "best", device="cpu")
    assert loaded.tuners.states() == {method: True}
    recorded = (tmp_path / "whole" / "predictions.test.jsonl").read_text().splitlines()
    test_examples = [json.loads(line) for line in recorded]
    from softprompt.data.splits import load_split

    metrics, records = loaded.evaluate(load_split(whole, "test"))
    assert [r["probabilities"] for r in records] == [r["probabilities"] for r in test_examples]
    assert metrics["accuracy"] == results["test_accuracy"]


def test_a_class_prompt_onto_another_clip_or_other_settings_is_refused(tiny_contrastive, tmp_path):
    from tiny_checkpoints import build_contrastive

    config = load_config(run_config(tiny_contrastive, tmp_path, "run"))
    train(config)
    config.training.max_steps = 12
    config.method.coop.n_ctx = 6
    with pytest.raises(Exception, match=r"ctx has shape \(4, 32\), this model's is \(6, 32\)"):
        train(config, resume="auto")
    config.method.coop.enabled, config.method.cocoop.enabled = False, True
    with pytest.raises(Exception, match="the methods is coop .* cocoop"):
        train(config, resume="auto")
    other = build_contrastive("clip", tmp_path / "other", seed=1)
    with pytest.raises(Exception, match="different embedding"):
        LoadedModel.from_bundle(tmp_path / "run" / "best", model=str(other), device="cpu")


def test_base_to_novel_reports_base_new_and_their_harmonic_mean(tiny_contrastive, tmp_path):
    classes = ("ant", "bee", "cat", "dog")  # base: ant, bee; new: cat, dog
    data = {}
    for split, count in (("train", 4), ("val", 2), ("test", 2)):
        root = tmp_path / "data" / split
        image_folders(root, count, classes=classes[:2])
        image_folders(root / "more", count, classes=classes[2:])
        for folder in (root / "more").iterdir():
            folder.rename(root / folder.name)
        (root / "more").rmdir()
        data[split] = root
    raw = make_config(
        tiny_contrastive["clip"], {**data, "subsample_classes": "base", "num_shots": 3},
        tmp_path / "run", task={"type": "classify"},
        method={"coop": {"enabled": True, "ctx_init": CONTEXT}},
        batch_size=2, max_steps=2, logging_steps=1,
    )  # fmt: skip
    results = train(build_config(raw))
    assert results["test_labels"] == ["ant", "bee"]
    assert results["test_new_labels"] == ["cat", "dog"]
    base, new = results["test_base_accuracy"], results["test_new_accuracy"]
    expected = 2 * base * new / (base + new) if base + new else 0.0
    assert results["test_hm"] == pytest.approx(expected)
    assert (tmp_path / "run" / "predictions.test_new.jsonl").is_file()


def test_the_linear_probe_is_scikit_learns(tiny_contrastive, tmp_path):
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from softprompt.data.splits import load_split
    from softprompt.workflows.linear_probe import linear_probe

    config = load_config(run_config(tiny_contrastive, tmp_path, "probe"))
    results = linear_probe(config)
    c = results["linear_probe_C"]
    backbone = load_backbone(str(tiny_contrastive["clip"]))
    train_examples = load_split(config, "train")
    classes = sorted({e.label for e in train_examples})
    features = backbone.image_features([e.image_path for e in train_examples]).double().numpy()
    labels = np.array([classes.index(e.label) for e in train_examples])
    by_hand = LogisticRegression(C=c, max_iter=1000, random_state=config.training.seed)
    by_hand.fit(features, labels)
    test = load_split(config, "test")
    expected = by_hand.predict_proba(
        backbone.image_features([e.image_path for e in test]).double().numpy()
    )
    loaded = LoadedModel.from_bundle(tmp_path / "probe" / "best", device="cpu")
    _, records = loaded.evaluate(test)
    ours = np.array([[r["probabilities"][name] for name in classes] for r in records])
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    assert results["trainable_parameters"] == features.shape[1] * 2 + 2


def test_two_processes_learn_the_context_one_process_learns(tiny_contrastive, tmp_path):
    """The same 9 steps of 4 images: one process, and two of 2 each (`accelerate launch`)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    root = Path(__file__).resolve().parent.parent
    one = load_config(run_config(tiny_contrastive, tmp_path, "one"))
    train(one)
    two = run_config(tiny_contrastive, tmp_path, "two")
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "true"}  # fmt: skip
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(root / "configs" / "accelerate" / "cpu_2proc.yaml"), "-m", "softprompt",
               "train", str(two), "training.batch_size=2", "--no-progress"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    weights = "checkpoint-9/coop/class_prompt.safetensors"
    a, b = load_file(str(tmp_path / "one" / weights)), load_file(str(tmp_path / "two" / weights))
    torch.testing.assert_close(a["ctx"], b["ctx"], rtol=1e-4, atol=1e-5)
