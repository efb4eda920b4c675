"""Same config and seed, same machine: bit-identical prompts (and optimizer state)."""

from __future__ import annotations

import pytest
import torch
from helpers import image_folders, make_config, prompt_method
from safetensors.torch import load_file
from test_train import run_config

from softprompt.config.run import build_config
from softprompt.train.loop import train

COMPARED = ("adapter_model.safetensors", "optimizer.safetensors", "scheduler.safetensors")


# Tiny models on a shared 2-core machine run fastest on one thread (see conftest).
pytestmark = pytest.mark.usefixtures("one_thread")


def assert_identical_runs(a, b, final: str) -> None:
    for name in COMPARED:
        left, right = a / final / name, b / final / name
        assert left.read_bytes() == right.read_bytes(), name
    best_a = load_file(str(a / "best" / "adapter_model.safetensors"))
    best_b = load_file(str(b / "best" / "adapter_model.safetensors"))
    assert best_a.keys() == best_b.keys()
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


@pytest.mark.parametrize("kind", ["gpt2", "t5"])
def test_text_runs_are_bit_identical(tiny_models, toy_data, tmp_path, kind):
    # GPT-2 trains with dropout; T5 is seq2seq: both paths draw from the RNG differently.
    runs = []
    for name in ("a", "b"):
        cfg = run_config(tiny_models[kind], toy_data, tmp_path / name, epochs=2, save_steps=4)
        train(cfg)
        runs.append(tmp_path / name)
    assert_identical_runs(*runs, final="checkpoint-12")

    other = run_config(tiny_models[kind], toy_data, tmp_path / "c", epochs=2, seed=7)
    train(other)
    a = load_file(str(runs[0] / "checkpoint-12" / "adapter_model.safetensors"))
    c = load_file(str(tmp_path / "c" / "checkpoint-12" / "adapter_model.safetensors"))
    assert not torch.equal(a["prompt_embeddings"], c["prompt_embeddings"])


def test_image_runs_are_bit_identical(tiny_models, tiny_clip, tmp_path):
    image_folders(tmp_path / "train", per_class=4)
    runs = []
    for name in ("a", "b"):
        raw = make_config(
            tiny_models["gpt2"],
            {"train": tmp_path / "train", "validation": False},
            tmp_path / name,
            method=prompt_method(init_method="VOCAB"),
            task={"type": "classify", "instruction": "Which colour?"},
            model_options={"vision_encoder": str(tiny_clip)},
            epochs=2,
            batch_size=4,
            learning_rate=0.3,
        )
        train(build_config(raw))
        runs.append(tmp_path / name)
    steps = sorted(p.name for p in runs[0].glob("checkpoint-*"))
    assert_identical_runs(*runs, final=steps[-1])
    projection = load_file(str(runs[0] / "best" / "adapter_model.safetensors"))
    assert any(k.startswith("projection.") for k in projection)  # trained beside the prompt
