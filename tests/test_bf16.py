"""bf16 training: every family learns under it, trainable weights and optimizer state stay
float32 in checkpoints, resume is exact, and one process can train in bf16 and then fp32.

Each training runs through the CLI in its own process, as users run it: accelerate fixes the
mixed precision of a process's first Accelerator."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import colour_images, make_config, write_config
from safetensors.torch import load_file

from softprompt.backbones.blip2 import Blip2Backbone
from softprompt.backbones.vision_base import VisionSettings
from softprompt.train.setup import use_eager_attention

pytestmark = pytest.mark.usefixtures("one_thread")
BF16 = {"bf16": True, "eval_generate": False, "logging_steps": 1, "save_total_limit": None}
TEXT_TRAINING = {"batch_size": 8, "learning_rate": 0.3, **BF16}


def train_cli(tmp_path: Path, raw: dict, *extra: str, name: str = "config.yaml") -> str:
    """`softprompt train` on `raw` in a child process; returns its stderr."""
    config = write_config(tmp_path / name, raw)
    done = subprocess.run(
        [sys.executable, "-m", "softprompt", "train", str(config), "--no-progress", *extra],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def text_config(model: Path, data: dict, out: Path, **training) -> dict:
    options = {"dtype": "bfloat16"}
    return make_config(model, data, out, model_options=options, training=TEXT_TRAINING, **training)


def train_losses(run: Path) -> list[float]:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["event"] == "train"]


def assert_float32_state(checkpoint: Path) -> None:
    """Trainable weights and every floating optimizer tensor are float32."""
    weights = load_file(str(checkpoint / "adapter_model.safetensors"))
    assert weights and {t.dtype for t in weights.values()} == {torch.float32}, checkpoint
    optimizer = load_file(str(checkpoint / "optimizer.safetensors"))
    floating = {t.dtype for t in optimizer.values() if t.is_floating_point() and t.dim()}
    assert floating == {torch.float32}, floating


@pytest.mark.parametrize("kind", ["gpt2", "llama", "t5"])
def test_text_families_learn_in_bf16_with_float32_state(tiny_models, toy_data, tmp_path, kind):
    out = tmp_path / "run"
    log = train_cli(tmp_path, text_config(tiny_models[kind], toy_data, out, max_steps=12))
    losses = train_losses(out)
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    assert_float32_state(out / "checkpoint-12")
    if kind != "t5":  # decoder-only LMs: eager attention instead of CPU flash attention
        assert "eager attention" in log


def image_pairs(tmp_path: Path, key: str, extra: dict) -> Path:
    images = colour_images(tmp_path / "img", per_colour=4)
    rows = [
        {"image_path": p.name, key: colour, **extra}
        for colour, paths in images.items()
        for p in paths
    ]
    path = tmp_path / "img" / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.mark.parametrize("kind", ["blip2-opt", "composed"])
def test_vlms_learn_in_bf16_with_float32_state(tiny_models, tiny_vlms, tiny_clip, tmp_path, kind):
    data = image_pairs(tmp_path, "answer", {"question": "what colour?"})
    if kind == "composed":
        model = {"name_or_path": str(tiny_models["gpt2"]),
                 "vision_encoder": str(tiny_clip)}  # fmt: skip
        prompt = {"num_virtual_tokens": 4, "placement": "before_image"}
    else:
        model = {"name_or_path": str(tiny_vlms[kind])}
        prompt = {"num_virtual_tokens": 4, "placement": "after_image"}
    out = tmp_path / "run"
    raw = {
        "model": {**model, "dtype": "bfloat16"},
        "method": {"prompt_tuning": prompt},
        "data": {"train_path": str(data), "val_test_path": str(data)},
        "task": {"type": "vqa", "max_new_tokens": 2},
        "training": {"output_dir": str(out), "max_steps": 12, "batch_size": 4,
                     "learning_rate": 0.3, **BF16},
    }  # fmt: skip
    train_cli(tmp_path, raw)
    losses = train_losses(out)
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    assert_float32_state(out / "checkpoint-12")
    if kind == "composed":  # the projection trains, and stays float32 too
        saved = load_file(str(out / "checkpoint-12" / "adapter_model.safetensors"))
        assert any(k.startswith("projection.") for k in saved)


def test_bf16_resume_is_exact(tiny_models, toy_data, tmp_path):
    # GPT-2 has dropout, so the RNG state is restored too.
    full = tmp_path / "full"
    raw = text_config(tiny_models["gpt2"], toy_data, full, max_steps=8, save_steps=4)
    train_cli(tmp_path, raw)
    part = tmp_path / "part"
    part.mkdir()
    shutil.copytree(full / "checkpoint-4", part / "checkpoint-4")
    raw["training"]["output_dir"] = str(part)
    train_cli(tmp_path, raw, "--resume", "auto", name="part.yaml")
    final, resumed = (
        load_file(str(run / "checkpoint-8" / "adapter_model.safetensors")) for run in (full, part)
    )
    assert torch.equal(final["prompt_embeddings"], resumed["prompt_embeddings"])
    assert train_losses(part)[-4:] == train_losses(full)[-4:]


DRIVER = """
import sys
from softprompt.config.run import build_config
from softprompt.train.loop import train
model, train_path, val_path, out = sys.argv[1:]
for k, bf16 in enumerate([True, False, True]):
    config = build_config({
        "model": {"name_or_path": model},
        "method": {"prompt_tuning": {"num_virtual_tokens": 4, "init_method": "RANDOM"}},
        "data": {"train_path": train_path, "val_test_path": val_path},
        "training": {"output_dir": f"{out}/{k}", "max_steps": 2, "batch_size": 8,
                     "bf16": bf16, "eval_generate": False},
    })
    print(k, train(config)["global_step"])
"""


def test_one_process_trains_in_bf16_then_fp32(tiny_models, toy_data, tmp_path):
    """accelerate refuses a second precision in a process; a single process resets it."""
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tiny_models["llama"]), str(toy_data["train"]),
         str(toy_data["val"]), str(tmp_path)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["0", "2", "1", "2", "2", "2"]


def test_eager_attention_applies_to_a_vlm_language_model(tiny_vlms):
    path = tiny_vlms["blip2-opt"]
    backbone = Blip2Backbone.from_pretrained(str(path), "tiny", torch.float32, VisionSettings())
    use_eager_attention(backbone)
    assert backbone.peft_model().config._attn_implementation == "eager"


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_loss_and_prompt_gradient_are_float32_over_bfloat16_weights(tiny_models, kind):
    from softprompt.backbones.base import EncodeSettings
    from softprompt.backbones.loading import load_backbone
    from softprompt.data.records import TextExample

    backbone = load_backbone(str(tiny_models[kind]), dtype="bfloat16")
    assert backbone.word_embeddings().dtype == torch.bfloat16
    rows = [TextExample("a", "red cat", "red"), TextExample("b", "a dog", "blue")]
    batch = backbone.collate(rows, EncodeSettings(max_input_length=16), with_targets=True)
    prompt = torch.randn(2, 3, backbone.hidden_size, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_sum, count = backbone.loss_sum(batch, prompt)
    assert loss_sum.dtype == torch.float32 and torch.isfinite(loss_sum)
    (loss_sum / count).backward()
    assert prompt.grad.dtype == torch.float32 and prompt.grad.abs().sum() > 0
