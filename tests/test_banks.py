"""Prompt banks: rows of one batch using prompts of different lengths give exactly what
each row gives with its prompt alone, on every family; bank bookkeeping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from softprompt.backbones.base import EncodeSettings
from softprompt.backbones.blip2 import Blip2Backbone
from softprompt.backbones.loading import load_backbone
from softprompt.backbones.vision_base import VisionSettings
from softprompt.config.run import ConfigError
from softprompt.data.records import TextExample, VisionExample
from softprompt.tuners.base import PromptInput
from softprompt.tuners.prompt_tuning.bank import PromptBank, stack_prompts
from softprompt.tuners.prompt_tuning.tuner import PromptTuner

pytestmark = pytest.mark.usefixtures("one_thread")
ENC = EncodeSettings(max_input_length=64, max_target_length=8)
LENGTHS = (2, 5, 3)  # three prompts of different lengths in one batch
IDS = torch.tensor([0, 1, 2, 1, 0, 2])


def prompts(hidden: int) -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(n, hidden) * 0.5 for n in LENGTHS]


def assert_rows_match_alone(backbone, batch_for, rows, generate: bool = True) -> None:
    """Log-probs (and greedy tokens) of a mixed batch equal each row with its prompt alone."""
    vectors = prompts(backbone.hidden_size)
    mixed = stack_prompts(vectors, IDS)
    assert not bool(mixed.mask.all())
    with torch.no_grad():
        together = backbone.sequence_logprobs(batch_for(rows, True), mixed)
        texts = backbone.generate(batch_for(rows, False), mixed, 4) if generate else None
        for i, row in enumerate(rows):
            alone_prompt = PromptInput.single(vectors[int(IDS[i])], 1)
            alone = backbone.sequence_logprobs(batch_for([row], True), alone_prompt)
            torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-4, atol=1e-4)
            if generate:
                own = backbone.generate(batch_for([row], False), alone_prompt, 4)
                assert texts[i] == own[0], (i, texts[i], own)


def text_rows() -> list[TextExample]:
    words = ["cat", "dog red", "bird tree house", "red", "blue cat dog", "green tree"]
    return [TextExample(id=str(i), input=w, target="red blue") for i, w in enumerate(words)]


@pytest.mark.parametrize("kind", ["llama", "gpt2", "t5"])
def test_text_rows_do_not_depend_on_their_batch_neighbours(tiny_models, kind):
    backbone = load_backbone(str(tiny_models[kind]))
    backbone.model.eval()

    def batch_for(rows, with_targets):
        return backbone.collate(rows, ENC, with_targets=with_targets)

    assert_rows_match_alone(backbone, batch_for, text_rows())


@pytest.fixture
def blip2(tiny_vlms, colour_pngs):
    return tiny_vlms["blip2-opt"], [p for paths in colour_pngs.values() for p in paths]


@pytest.mark.parametrize("placement", ["before_image", "after_image"])
def test_vlm_rows_do_not_depend_on_their_batch_neighbours(blip2, placement):
    path, images = blip2
    settings = VisionSettings(placement=placement)
    backbone = Blip2Backbone.from_pretrained(str(path), "tiny", torch.float32, settings)
    backbone.model.eval()
    rows = [
        VisionExample(id=str(i), image_path=str(images[i % len(images)]), text="what", target="red")
        for i in range(len(IDS))
    ]

    def batch_for(rows, with_targets):
        return backbone.collate(rows, ENC, with_targets=with_targets)

    assert_rows_match_alone(backbone, batch_for, rows)


def test_one_length_bank_shares_each_prompt_once_and_matches(tiny_models):
    """Equal-length prompts take the grouped shared-prefix path; results match the
    full forward of each row."""
    backbone = load_backbone(str(tiny_models["llama"]))
    backbone.model.eval()
    torch.manual_seed(2)
    table = torch.randn(3, 4, backbone.hidden_size) * 0.5
    mixed = PromptInput(table, IDS, torch.ones(3, 4, dtype=torch.long))
    rows = text_rows()
    batch = backbone.collate(rows, ENC, with_targets=True)
    with torch.no_grad():
        together = backbone.sequence_logprobs(batch, mixed)
        full = backbone.sequence_logprobs(batch, PromptInput.from_rows(table[IDS].clone()))
    torch.testing.assert_close(together, full, rtol=1e-4, atol=1e-4)


def test_bank_selects_members_and_falls_back_to_one_prompt():
    members = {n: PromptTuner.from_weight(torch.randn(k, 8)) for n, k in (("a", 2), ("b", 3))}
    bank = PromptBank(members)
    with pytest.raises(ConfigError, match="a, b"):
        bank.prompt_input(4)
    with pytest.raises(ConfigError, match="no prompt 'c'"):
        bank.select("c")
    bank.select("b")
    assert bank.prompt_input(4).is_single and bank.prompt_input(4).length == 3
    same = bank.prompt_input(3, ids=torch.tensor([1, 1, 1]))
    assert same.is_single  # one prompt for the whole batch keeps the fast path
    mixed = bank.prompt_input(3, ids=torch.tensor([0, 1, 0]))
    assert mixed.length == 3 and mixed.mask.tolist() == [[1, 1, 0], [1, 1, 1]]


def test_bank_saves_loadable_member_directories(tmp_path: Path, tiny_models):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from softprompt.artifacts.prompt_dir import fingerprint
    from softprompt.inference.loaded import LoadedModel

    backbone = load_backbone(str(tiny_models["gpt2"]))
    members = {
        n: PromptTuner.from_weight(torch.randn(k, backbone.hidden_size) * 0.1)
        for n, k in (("colour", 2), ("shape", 4))
    }
    bank = PromptBank(members, {"colour": {"type": "text2text"}, "shape": {"type": "text2text"}})
    context = {
        "family": "causal_lm",
        "base_model": str(tiny_models["gpt2"]),
        "fingerprint": fingerprint(backbone.word_embeddings(), backbone.tokenizer),
        "task": {"type": "text2text"},
    }
    from softprompt.artifacts.bundle import write_bundle

    write_bundle(tmp_path / "bank", [bank], context, {})
    peft = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_models["gpt2"]), tmp_path / "bank" / "shape"
    )
    assert peft.peft_config["default"].num_virtual_tokens == 4
    loaded = LoadedModel.from_bundle(tmp_path / "bank", device="cpu")
    served = loaded.tuners.prompt
    assert isinstance(served, PromptBank) and served.names == ["colour", "shape"]
    torch.testing.assert_close(served.vectors("shape"), members["shape"].weight)
    (tmp_path / "bank" / "shape" / "adapter_model.safetensors").write_bytes(b"broken")
    with pytest.raises(ValueError, match="modified or damaged"):
        LoadedModel.from_bundle(tmp_path / "bank", device="cpu")
