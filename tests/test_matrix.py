"""Every registered tuning method on every registered backbone family, PEFT-style.

Each case trains 2 steps on a tiny model, saves `best/`, reloads it with
`LoadedModel.from_bundle` and predicts the validation split: the greedy text (text
families) or option probabilities (vision families, a classify task) must be what the
run's own tuners gave (`predictions.val.jsonl`, written from the same `best/`). A
combination the code refuses is a case too: it must fail with the code's own reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from helpers import image_folders, make_config, toy_task, write_jsonl

from softprompt.backbones.loading import ModelLoadError
from softprompt.backbones.quantization import quantization_support
from softprompt.backbones.spec import family_names
from softprompt.config.run import ConfigError, build_config
from softprompt.data.splits import load_split
from softprompt.inference.loaded import LoadedModel, default_device
from softprompt.train.loop import train
from softprompt.tuners.spec import family_method_problem, section_specs

pytestmark = pytest.mark.usefixtures("one_thread")
BATCH = 4
TRAINING = {
    "max_steps": 2,
    "batch_size": BATCH,
    "learning_rate": 0.1,
    "eval_generate": False,
    "save_total_limit": None,
}
# The method's own section for a case; other methods are switched off. A method missing
# here runs with its defaults (`enabled: true`), so a new method is covered on arrival.
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "prompt_tuning": {"num_virtual_tokens": 3, "init_method": "RANDOM"},
    "lora": {"r": 2, "learning_rate": 0.01},
    "full": {"learning_rate": 1e-3},
    "prefix_tuning": {"num_virtual_tokens": 3},
}
# Variants of a method that are cases of their own: name -> (method, extra settings).
VARIANTS = {"qlora": ("lora", {"quantization_bit": 4})}
# (case, family) -> (error, the code's reason): what the code refuses, and why.
REFUSED: dict[tuple[str, str], tuple[type[Exception], str]] = {
    ("qlora", "composed"): (
        ModelLoadError,
        "composed models load their parts from several sources .* that bitsandbytes cannot "
        "quantize",
    ),
}


def registered_methods() -> list[str]:
    """The methods with a `method.<name>` section, from the method table."""
    return [spec.name for spec in section_specs()]


def registered_families() -> list[str]:
    """The backbone families, from the family table."""
    return list(family_names())


def expected_refusal(case: str, family: str) -> tuple[type[Exception], str] | None:
    """The error and reason the code gives for a combination it does not support."""
    method = VARIANTS.get(case, (case, {}))[0]
    problem = family_method_problem(family, [method])
    if problem:  # a method tied to other families (CoOp: CLIP), or a family's own list
        return ConfigError, re.escape(problem)
    if case == "qlora":
        # Checked before any model loads; where bitsandbytes cannot run here, every
        # QLoRA case stops with this reason.
        problem = quantization_support(4, default_device().type)
        if problem:
            return ConfigError, re.escape(problem)
    return REFUSED.get((case, family))


def method_cases() -> list[str]:
    return [*registered_methods(), *VARIANTS]


def method_section(case: str) -> dict[str, Any]:
    """`method:` with the case's method on and every other method off."""
    method, extra = VARIANTS.get(case, (case, {}))
    section = {name: {"enabled": False} for name in registered_methods()}
    section[method] = {"enabled": True, **METHOD_SETTINGS.get(method, {}), **extra}
    return section


def family_setup(family: str, models: Mapping[str, Mapping[str, Path]], root: Path) -> dict:
    """`make_config` arguments for a tiny model of `family` with data it can learn from."""
    text = {
        "train": write_jsonl(root / "data" / "train.jsonl", toy_task(8, seed=1)),
        "val": write_jsonl(root / "data" / "val.jsonl", toy_task(4, seed=2)),
    }
    images = {
        "train": image_folders(root / "images" / "train", per_class=2),
        "val": image_folders(root / "images" / "val", per_class=2),
    }
    classify = {"type": "classify", "instruction": "Which colour?"}
    text_model = {"causal_lm": "llama", "seq2seq": "t5"}
    vlm = {"blip2": "blip2-opt", "instructblip": "instructblip-t5"}
    if family in text_model:
        return {"model": models["text"][text_model[family]], "data": text,
                "task": {"max_new_tokens": 3}}  # fmt: skip
    if family in vlm:
        return {"model": models["vlm"][vlm[family]], "data": images, "task": classify}
    if family == "clip":
        return {"model": models["contrastive"]["clip"], "data": images, "task": classify}
    assert family == "composed", f"family {family!r} has no tiny model in test_matrix.py"
    return {
        "model": models["text"]["gpt2"],
        "data": images,
        "task": classify,
        "model_options": {"vision_encoder": str(models["clip"]["clip"])},
    }


def answers(records: list[dict]) -> list[tuple]:
    """What a prediction says: id, greedy text and option probabilities (when scored)."""
    return [(r["id"], r.get("prediction"), r.get("probabilities")) for r in records]


@pytest.fixture
def models(tiny_models, tiny_vlms, tiny_clip, tiny_contrastive) -> dict[str, Mapping[str, Path]]:
    return {"text": tiny_models, "vlm": tiny_vlms, "clip": {"clip": tiny_clip},
            "contrastive": tiny_contrastive}  # fmt: skip


@pytest.mark.parametrize("family", registered_families())
@pytest.mark.parametrize("case", method_cases())
def test_train_save_reload_predicts_the_same(case, family, models, tmp_path):
    setup = family_setup(family, models, tmp_path)
    out = tmp_path / "run"
    raw = make_config(setup.pop("model"), setup.pop("data"), out, method=method_section(case),
                      training=TRAINING, **setup)  # fmt: skip
    config = build_config(raw)
    refusal = expected_refusal(case, family)
    if refusal is not None:
        with pytest.raises(refusal[0], match=refusal[1]):
            train(config)
        return
    results = train(config)
    assert results["global_step"] == 2
    expected = [
        json.loads(line) for line in (out / "predictions.val.jsonl").read_text().splitlines()
    ]
    loaded = LoadedModel.from_bundle(out / "best")
    got = loaded.predict(load_split(config, "val"), batch_size=BATCH)
    assert all("error" not in r for r in got)
    assert [r["id"] for r in got] == [r["id"] for r in expected]
    assert answers(got) == answers(expected)


def test_every_family_has_a_tiny_model(models, tmp_path):
    for family in registered_families():
        assert family_setup(family, models, tmp_path / family)["model"]


def test_refusals_name_registered_cases():
    for case, family in REFUSED:
        assert case in method_cases() and family in registered_families()


def test_config_refuses_quantization_without_lora():
    section = method_section("prompt_tuning")
    section["lora"]["quantization_bit"] = 4
    with pytest.raises(ConfigError, match="quantization_bit"):
        build_config({"method": section})
