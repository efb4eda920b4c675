"""LoRA inside the language model of every vision-language family, beside the soft prompt."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from tiny_checkpoints import KINDS

from softprompt.backbones.base import EncodeSettings
from softprompt.backbones.blip2 import Blip2Backbone, InstructBlipBackbone
from softprompt.backbones.composed import ComposedVLMBackbone
from softprompt.backbones.vision_base import VisionSettings
from softprompt.data.records import VisionExample
from softprompt.tuners.base import PromptInput
from softprompt.tuners.lora.config import LoraSettings
from softprompt.tuners.lora.tuner import LoraTuner

ENC = EncodeSettings(max_input_length=64, max_target_length=8)


def load(kind, tiny_vlms, tiny_clip, tiny_models):
    if kind == "composed":
        settings = VisionSettings(
            vision_encoder=str(tiny_clip), language_model=str(tiny_models["gpt2"])
        )
        return ComposedVLMBackbone.from_pretrained(None, "tiny", torch.float32, settings)
    cls = Blip2Backbone if kind.startswith("blip2") else InstructBlipBackbone
    return cls.from_pretrained(str(tiny_vlms[kind]), kind, torch.float32, VisionSettings())


@pytest.mark.parametrize("kind", [*KINDS, "composed"])
def test_lora_in_the_language_model_trains_with_a_prompt(
    tiny_vlms, tiny_clip, colour_pngs, tiny_models, kind
):
    torch.manual_seed(0)
    backbone = load(kind, tiny_vlms, tiny_clip, tiny_models)
    lora = LoraTuner.create(LoraSettings(enabled=True, r=4, dropout=0.0), backbone)
    names = [n for n, m in backbone.peft_model().named_modules() if isinstance(m, BaseTunerLayer)]
    assert names, "auto targets found no module"
    assert not any("qformer" in n or "vision" in n for n in names), names
    prompt = torch.nn.Parameter(backbone.word_embeddings()[:3].detach().clone())
    rows = [
        VisionExample(id=f"{c}{i}", image_path=str(p), text="what color is it", target=c)
        for c, paths in colour_pngs.items()
        for i, p in enumerate(paths)
    ]
    batch = backbone.collate(rows, ENC, with_targets=True)
    params = [prompt, *(p for m in lora.modules().values() for p in m.parameters())]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    backbone.model.train()
    losses = []
    for _ in range(4):
        total, count = backbone.loss_sum(batch, PromptInput.single(prompt, len(rows)))
        loss = total / count
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0], losses
    moved = [v for k, v in lora.state_dict().items() if "lora_B" in k]
    assert moved and any(v.abs().sum() > 0 for v in moved)


def test_lora_outside_the_language_model_is_refused(tiny_vlms, tiny_models):
    backbone = load("blip2-opt", tiny_vlms, None, tiny_models)
    settings = LoraSettings(enabled=True, r=2, target_modules=r"qformer\..*\.(query|value)")
    with pytest.raises(ValueError, match="outside the language model"):
        LoraTuner.create(settings, backbone)
