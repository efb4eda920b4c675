"""BLIP-2 / InstructBLIP backbones on tiny checkpoints built from configs (random weights).

Each checkpoint is written with `save_pretrained` (model + processor) and loaded back
through the backbone's `from_pretrained`, the path a user's hub checkpoint takes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from tiny_checkpoints import KINDS

from softprompt.backbones.base import BACKBONES, EncodeSettings, VisionLanguageBackbone
from softprompt.backbones.blip2 import Blip2Backbone, InstructBlipBackbone, QueryTokenBackbone
from softprompt.backbones.vision_base import VisionSettings
from softprompt.data.images import load_image
from softprompt.data.records import VisionExample
from softprompt.tuners.prompt_tuning.config import PromptTuningConfig
from softprompt.tuners.prompt_tuning.model import SoftPrompt

ENC = EncodeSettings(max_input_length=64, max_target_length=8)
QUESTION = "what color is it"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tensors here are tiny: a second intra-op thread only adds synchronisation, and on a
    shared, busy CPU it made these tests several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def load(tiny_vlms: Mapping[str, Path], kind: str, **settings) -> QueryTokenBackbone:
    cls = Blip2Backbone if kind.startswith("blip2") else InstructBlipBackbone
    return cls.from_pretrained(
        str(tiny_vlms[kind]), kind, torch.float32, VisionSettings(**settings)
    )


def examples(colour_pngs: dict[str, list[Path]], text: str = QUESTION) -> list[VisionExample]:
    return [
        VisionExample(id=f"{colour}{i}", image_path=str(path), text=text, target=colour)
        for colour, paths in colour_pngs.items()
        for i, path in enumerate(paths)
    ]


def soft_prompt(backbone: QueryTokenBackbone, n: int = 4, seed: int = 0) -> SoftPrompt:
    torch.manual_seed(seed)
    prompt = SoftPrompt(n, backbone.hidden_size)
    config = PromptTuningConfig(num_virtual_tokens=n, init_method="RANDOM")
    prompt.initialize(config, backbone.word_embeddings(), backbone.tokenizer)
    return prompt


def mean_loss(backbone: QueryTokenBackbone, batch: dict, prompt: torch.Tensor | None):
    total, count = backbone.loss_sum(batch, prompt)
    return total / count


# ----------------------------------------------------------------------------- basics


@pytest.mark.parametrize("kind", KINDS)
def test_prefix_matches_upstream_image_features(tiny_vlms, colour_pngs, kind):
    backbone = load(tiny_vlms, kind)
    assert isinstance(backbone, VisionLanguageBackbone)
    assert BACKBONES.get(backbone.family) is type(backbone)
    batch = backbone.collate(examples(colour_pngs), ENC, with_targets=True)
    prefix = backbone.image_prefix(batch)
    assert prefix.shape == (6, 4, backbone.hidden_size)
    # Same numbers as transformers' own get_image_features (the projected query outputs).
    hf = backbone.model.hf
    pixels = backbone.image_processor(
        images=[load_image(p) for p in batch["image_paths"]], return_tensors="pt"
    )["pixel_values"]
    if backbone.reads_instruction:
        ids, mask = batch["qformer_input_ids"], batch["qformer_attention_mask"]
        expected = hf.get_image_features(pixels, ids, mask).pooler_output
    else:
        expected = hf.get_image_features(pixels).pooler_output
    torch.testing.assert_close(prefix, expected)
    assert not torch.allclose(prefix[0], prefix[3])  # red and blue images differ
    assert backbone.describe()["lm_family"] == ("causal_lm" if "opt" in kind else "seq2seq")
    assert all(not p.requires_grad for p in backbone.model.parameters())


def test_wrong_checkpoint_kind_is_refused(tiny_vlms):
    with pytest.raises(ValueError, match="'instructblip' checkpoint; family 'blip2'"):
        Blip2Backbone.from_pretrained(str(tiny_vlms["instructblip-opt"]), "x", torch.float32)


def test_blip2_rejects_qformer_prompt(tiny_vlms):
    with pytest.raises(ValueError, match=r"method\.prompt_tuning\.qformer_prompt_tokens = 2"):
        load(tiny_vlms, "blip2-opt", qformer_prompt_tokens=2)


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("kind", KINDS)
def test_loss_falls_with_adam(tiny_vlms, colour_pngs, kind):
    backbone = load(tiny_vlms, kind)
    batch = backbone.collate(examples(colour_pngs), ENC, with_targets=True)
    prompt = soft_prompt(backbone, n=8)
    optimizer = torch.optim.Adam(prompt.parameters(), lr=0.3)
    losses = []
    for _ in range(30):
        loss = mean_loss(backbone, batch, prompt(6))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses
    # Image features were computed once, then read from the cache every step.
    assert backbone.cache.misses == 6 and backbone.cache.hits == 29 * 6


@pytest.mark.parametrize("kind", KINDS)
def test_batched_equals_one_at_a_time(tiny_vlms, colour_pngs, kind):
    backbone = load(tiny_vlms, kind)
    prompt = soft_prompt(backbone)
    # Different text lengths, so both the LM text and the Q-Former instruction are padded.
    rows = examples(colour_pngs)
    for i, row in enumerate(rows):
        row.text = " ".join([QUESTION] + ["cat"] * i)
    batched = backbone.generate(backbone.collate(rows, ENC, False), prompt(6), 4)
    single = [backbone.generate(backbone.collate([r], ENC, False), prompt(1), 4)[0] for r in rows]
    assert all(isinstance(s, str) for s in batched)
    assert batched == single
    # Greedy strings of a random tiny model can be degenerate (T5 repeats <pad>), so the
    # scores are compared too: padding must not change any number.
    scores = backbone.sequence_logprobs(backbone.collate(rows, ENC, True), prompt(6))
    one_by_one = torch.cat(
        [backbone.sequence_logprobs(backbone.collate([r], ENC, True), prompt(1)) for r in rows]
    )
    torch.testing.assert_close(scores, one_by_one, atol=1e-4, rtol=1e-4)
    assert scores.shape == (6,) and bool((scores < 0).all())


def test_placement_before_and_after_image_differ(tiny_vlms, colour_pngs):
    rows = examples(colour_pngs)
    before = load(tiny_vlms, "blip2-opt", placement="before_image")
    after = load(tiny_vlms, "blip2-opt", placement="after_image")
    prompt = soft_prompt(before)(6)
    batch = before.collate(rows, ENC, with_targets=True)
    assert before.describe()["placement"] == "before_image"
    assert not torch.allclose(mean_loss(before, batch, prompt), mean_loss(after, batch, prompt))
    # Without a prompt the two are the same model.
    torch.testing.assert_close(mean_loss(before, batch, None), mean_loss(after, batch, None))
    with pytest.raises(ValueError, match="placement"):
        load(tiny_vlms, "blip2-opt", placement="middle")


# ----------------------------------------------------------------------------- caching


def test_blip2_second_epoch_runs_no_vision_encoder(tiny_vlms, colour_pngs):
    backbone = load(tiny_vlms, "blip2-t5")
    calls = []
    backbone.model.hf.vision_model.register_forward_hook(lambda *a: calls.append(1))
    batches = [backbone.collate(examples(colour_pngs)[i : i + 3], ENC, True) for i in (0, 3)]
    for batch in batches:
        backbone.loss_sum(batch, None)
    assert (backbone.cache.misses, backbone.cache.hits, len(calls)) == (6, 0, 2)
    for batch in batches:  # epoch 2
        backbone.loss_sum(batch, None)
    assert (backbone.cache.misses, backbone.cache.hits, len(calls)) == (6, 6, 2)


def test_instructblip_cache_key_includes_instruction(tiny_vlms, colour_pngs):
    backbone = load(tiny_vlms, "instructblip-opt")
    image = colour_pngs["red"][0]
    rows = [
        VisionExample(id="a", image_path=str(image), text="what color is it", target="red"),
        VisionExample(id="b", image_path=str(image), text="is it a cat", target="red"),
    ]
    prefix = backbone.image_prefix(backbone.collate(rows, ENC, True))
    assert (backbone.cache.misses, backbone.cache.hits) == (2, 0)
    assert not torch.allclose(prefix[0], prefix[1])  # the Q-Former read the instruction
    again = backbone.image_prefix(backbone.collate(rows[::-1], ENC, True))
    assert (backbone.cache.misses, backbone.cache.hits) == (2, 2)
    torch.testing.assert_close(again, prefix.flip(0))


def test_feature_cache_off_and_disk(tiny_vlms, colour_pngs, tmp_path):
    rows = examples(colour_pngs)[:2]
    off = load(tiny_vlms, "blip2-opt", feature_cache="off")
    for _ in range(2):
        off.image_prefix(off.collate(rows, ENC, True))
    assert (off.cache.hits, off.cache.misses) == (0, 0)
    disk = load(tiny_vlms, "blip2-opt", feature_cache="disk", cache_dir=str(tmp_path))
    first = disk.image_prefix(disk.collate(rows, ENC, True))
    reloaded = load(tiny_vlms, "blip2-opt", feature_cache="disk", cache_dir=str(tmp_path))
    torch.testing.assert_close(reloaded.image_prefix(reloaded.collate(rows, ENC, True)), first)
    assert (reloaded.cache.hits, reloaded.cache.misses) == (2, 0)
    with pytest.raises(ValueError, match="cache_dir"):
        load(tiny_vlms, "blip2-opt", feature_cache="disk")


# ----------------------------------------------------------------------------- Q-Former prompt


@pytest.mark.parametrize("kind", ["instructblip-opt", "instructblip-t5"])
def test_qformer_prompt_changes_prefix_and_trains(tiny_vlms, colour_pngs, kind):
    plain = load(tiny_vlms, kind)
    tuned = load(tiny_vlms, kind, qformer_prompt_tokens=3)
    module = tuned.trainable_modules()["qformer_prompt"]
    assert plain.trainable_modules() == {} and module.weight.shape == (3, 32)
    assert tuned.describe()["qformer_prompt_tokens"] == 3
    batch = tuned.collate(examples(colour_pngs), ENC, with_targets=True)
    assert not torch.allclose(tuned.image_prefix(batch), plain.image_prefix(batch))

    loss = mean_loss(tuned, batch, None)
    assert not torch.allclose(loss, mean_loss(plain, batch, None))
    loss.backward()
    assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0
    hf = tuned.model.hf
    assert all(p.grad is None for p in hf.vision_model.parameters())
    assert all(p.grad is None for p in hf.qformer.parameters())

    # Only the vision encoder's output is cached; the Q-Former runs each step.
    optimizer = torch.optim.Adam(module.parameters(), lr=0.1)
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        step_loss = mean_loss(tuned, batch, None)
        step_loss.backward()
        optimizer.step()
        losses.append(step_loss.item())
    assert losses[-1] < losses[0], losses
    assert tuned.cache.misses == 6 and tuned.cache.hits == 11 * 6


def test_state_round_trip_and_mismatch_errors(tiny_vlms, colour_pngs):
    tuned = load(tiny_vlms, "instructblip-opt", qformer_prompt_tokens=3)
    with torch.no_grad():
        tuned.trainable_modules()["qformer_prompt"].weight.add_(1.0)
    state = tuned.state_for_save()
    assert list(state) == ["qformer_prompt.weight"]
    assert state["qformer_prompt.weight"].shape == (3, 32)
    fresh = load(tiny_vlms, "instructblip-opt", qformer_prompt_tokens=3)
    batch = fresh.collate(examples(colour_pngs)[:2], ENC, True)
    assert not torch.allclose(fresh.image_prefix(batch), tuned.image_prefix(batch))
    fresh.load_saved_state({**state, "prompt_embeddings": torch.zeros(4, 32)})
    torch.testing.assert_close(fresh.image_prefix(batch), tuned.image_prefix(batch))

    with pytest.raises(ValueError, match=r"saved shape \(3, 32\).*expects \(5, 32\)"):
        load(tiny_vlms, "instructblip-opt", qformer_prompt_tokens=5).load_saved_state(state)
    plain = load(tiny_vlms, "instructblip-opt")
    assert plain.state_for_save() == {}
    plain.load_saved_state({})
    with pytest.raises(ValueError, match="qformer_prompt_tokens = 0; set it to 3"):
        plain.load_saved_state(state)
    with pytest.raises(ValueError, match="no qformer_prompt.weight"):
        fresh.load_saved_state({})


# ----------------------------------------------------------------------------- the gap


def test_peft_prompt_tuning_cannot_drive_instructblip(tiny_vlms, colour_pngs):
    """PEFT 0.21 wraps InstructBLIP but finds no word embeddings, so its forward fails.

    `get_peft_model` looks for the module whose weight has `config.vocab_size` rows; the
    composite InstructBLIP config keeps the vocabulary in `text_config`, so the prompt
    encoder has no embedding table to prepend to and the first forward raises.
    """
    from peft import PromptTuningConfig as PeftPromptTuningConfig
    from peft import get_peft_model
    from transformers import AutoProcessor, InstructBlipForConditionalGeneration

    path = tiny_vlms["instructblip-opt"]
    model = InstructBlipForConditionalGeneration.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    peft_model = get_peft_model(
        model, PeftPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    )
    assert peft_model.word_embeddings is None
    inputs = processor(
        images=[load_image(colour_pngs["red"][0])], text=[QUESTION], return_tensors="pt"
    )
    with pytest.raises(TypeError, match="NoneType"):
        peft_model(**inputs, labels=inputs["input_ids"])

    # Ours: the soft prompt reaches the language model and receives a gradient.
    backbone = load(tiny_vlms, "instructblip-opt")
    prompt = soft_prompt(backbone)
    mean_loss(backbone, backbone.collate(examples(colour_pngs), ENC, True), prompt(6)).backward()
    assert prompt.embedding.weight.grad.abs().sum() > 0
