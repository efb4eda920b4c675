"""bf16 training on the CPU: attention runs eagerly (fast bf16 matmuls), the loss falls,
and trainable weights stay float32."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from vlm_fixtures import build_vlm

from softprompt.backbones.blip2 import Blip2Backbone
from softprompt.backbones.vision_base import VisionSettings
from softprompt.train.setup import use_eager_attention
from softprompt.tuners.prompt_tuning.io import load_prompt

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bf16_run_uses_eager_attention_and_learns(tiny_models, toy_data, tmp_path):
    """Run as its own process: accelerate fixes mixed precision once per process."""
    raw = {
        "model": {"name_or_path": str(tiny_models["llama"])},
        "method": {"prompt_tuning": {"num_virtual_tokens": 4, "init_method": "RANDOM"}},
        "data": {"train_path": str(toy_data["train"]), "val_test_path": str(toy_data["val"])},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 6, "batch_size": 8,
                     "learning_rate": 0.1, "bf16": True, "eval_generate": False,
                     "logging_steps": 1},
    }  # fmt: skip
    config = tmp_path / "config.yaml"
    config.write_text("# softprompt train config.yaml\n" + yaml.safe_dump(raw))
    done = subprocess.run(
        [sys.executable, "-m", "softprompt", "train", str(config), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "eager attention" in done.stderr
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(x)["loss"] for x in lines if json.loads(x)["event"] == "train"]
    assert losses[-1] < losses[0], losses
    assert load_prompt(tmp_path / "run" / "best").weight.dtype == torch.float32


def test_eager_attention_applies_to_a_vlm_language_model(tmp_path):
    path = build_vlm("blip2-opt", tmp_path)
    backbone = Blip2Backbone.from_pretrained(str(path), "tiny", torch.float32, VisionSettings())
    use_eager_attention(backbone)
    assert backbone.peft_model().config._attn_implementation == "eager"
