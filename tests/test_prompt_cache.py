"""Generation from a leading prompt's cached keys and values: the same greedy tokens as
without reuse, and never a stale cache after the prompt or an adapter changed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import colour_images

from softprompt.backbones.base import EncodeSettings
from softprompt.backbones.blip2 import Blip2Backbone
from softprompt.backbones.composed import ComposedVLMBackbone
from softprompt.backbones.loading import load_backbone
from softprompt.backbones.text_common import greedy_config
from softprompt.backbones.vision_base import VisionSettings, prompt_position
from softprompt.data.records import TextExample, VisionExample
from softprompt.tuners.base import PromptInput
from softprompt.tuners.lora.config import LoraSettings
from softprompt.tuners.lora.tuner import LoraTuner
from softprompt.tuners.prefix_tuning.config import PrefixTuningSettings
from softprompt.tuners.prefix_tuning.tuner import PrefixTuner

ENC = EncodeSettings(max_input_length=32, max_target_length=8)
# Rows of different lengths (left padding of 0 to 5 tokens).
TEXTS = ["the cat sat", "a dog", "red green blue big small house tree", "on", "one two"]
NEW = 6


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, list[Path]]:
    return colour_images(tmp_path_factory.mktemp("images"), per_colour=2)


def text_batch(backbone, texts=TEXTS):
    rows = [TextExample(id=str(i), input=t) for i, t in enumerate(texts)]
    return backbone.collate(rows, ENC, with_targets=False)


def random_prompt(backbone, length: int = 4, seed: int = 0) -> torch.nn.Parameter:
    gen = torch.Generator().manual_seed(seed)
    scale = float(backbone.word_embeddings().detach().std())
    return torch.nn.Parameter(torch.randn(length, backbone.hidden_size, generator=gen) * scale)


def plain_and_reused(
    lm, generate, passes: int = 2, reuses: bool = True
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Ids without reuse, then `passes` calls with reuse (the first fills the cache);
    checks that each of those looked the prompt up (or, `reuses=False`, that none did)."""
    cache = lm.prompt_kv
    cache.enabled = False
    plain = generate()
    cache.enabled = True
    lookups = cache.hits + cache.misses
    reused = [generate() for _ in range(passes)]
    assert cache.hits + cache.misses - lookups >= (passes if reuses else 0)
    if not reuses:
        assert cache.hits + cache.misses == lookups
    return plain, reused


def assert_not_degenerate(ids: torch.Tensor) -> None:
    assert len({tuple(r) for r in ids.tolist()}) > 1, ids.tolist()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_reuse_gives_the_tokens_of_plain_generation(tiny_models, kind) -> None:
    backbone = load_backbone(str(tiny_models[kind]))
    batch = text_batch(backbone)
    assert not bool(batch["attention_mask"].all()), "rows should differ in length"
    prompt = PromptInput.single(random_prompt(backbone).detach(), len(TEXTS))
    cache = backbone.prompt_kv
    with torch.no_grad():
        plain, reused = plain_and_reused(
            backbone, lambda: backbone.generate_ids(batch, prompt, NEW)
        )
    assert_not_degenerate(plain)
    for ids in reused:
        assert ids.tolist() == plain.tolist()
    assert (cache.misses, cache.hits) == (1, 1)  # computed once, then served from the cache
    # A smaller batch of other rows reuses the same entry.
    other = text_batch(backbone, ["big tree", "what is it"])
    small = PromptInput.single(prompt.table[0], 2)
    with torch.no_grad():
        plain, reused = plain_and_reused(backbone, lambda: backbone.generate_ids(other, small, NEW))
    assert reused[0].tolist() == plain.tolist()
    assert (cache.misses, cache.hits) == (1, 3)


def test_bank_rows_reuse_their_own_prompt(tiny_models) -> None:
    backbone = load_backbone(str(tiny_models["llama"]))
    batch = text_batch(backbone)
    table = torch.stack([random_prompt(backbone, seed=s).detach() for s in (1, 2)])
    ids = torch.tensor([1, 0, 0, 1, 1])
    prompt = PromptInput(table, ids, torch.ones(2, table.shape[1], dtype=torch.long))
    with torch.no_grad():
        plain, reused = plain_and_reused(
            backbone, lambda: backbone.generate_ids(batch, prompt, NEW)
        )
        single = backbone.generate_ids(batch, PromptInput.single(table[1], len(TEXTS)), NEW)
    assert all(ids.tolist() == plain.tolist() for ids in reused)
    assert (backbone.prompt_kv.misses, backbone.prompt_kv.hits) == (2, 3)
    assert plain.tolist() != single.tolist()  # the rows of prompt 0 answer differently


def test_a_row_with_nothing_after_the_prompt_falls_back(tiny_models) -> None:
    backbone = load_backbone(str(tiny_models["gpt2"]))  # adds no BOS: "" is an empty row
    batch = text_batch(backbone, ["the cat sat", ""])
    prompt = PromptInput.single(random_prompt(backbone).detach(), 2)
    with torch.no_grad():
        plain, reused = plain_and_reused(
            backbone, lambda: backbone.generate_ids(batch, prompt, NEW), reuses=False
        )
    assert reused[0].tolist() == plain.tolist()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_training_step_on_the_prompt_is_never_served_stale(tiny_models, kind) -> None:
    backbone = load_backbone(str(tiny_models[kind]))
    batch = text_batch(backbone)
    weight = random_prompt(backbone)
    rows = len(TEXTS)
    with torch.no_grad():
        before = backbone.generate_ids(batch, PromptInput.single(weight, rows), NEW)
    optimizer = torch.optim.SGD([weight], lr=50.0)
    loss = weight.pow(2).sum() - 3 * weight[:, :4].sum()  # any step that moves the prompt
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        plain, reused = plain_and_reused(
            backbone, lambda: backbone.generate_ids(batch, PromptInput.single(weight, rows), NEW)
        )
    assert reused[0].tolist() == plain.tolist()
    assert plain.tolist() != before.tolist()  # the step changed the answers: stale would show
    assert backbone.prompt_kv.misses == 2


def lively_lora(backbone, seed: int = 0) -> LoraTuner:
    """LoRA with non-zero B (a fresh LoRA is the identity), so switching it matters."""
    lora = LoraTuner.create(LoraSettings(enabled=True, r=4, dropout=0.0), backbone)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in lora_b(backbone):
            param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    assert lora_b(backbone)
    return lora


def lora_b(backbone) -> list[torch.nn.Parameter]:
    return [p for n, p in backbone.model.named_parameters() if "lora_B" in n]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_lora_switches_and_updates_are_never_served_stale(tiny_models, kind) -> None:
    backbone = load_backbone(str(tiny_models[kind]))
    batch = text_batch(backbone)
    prompt = PromptInput.single(random_prompt(backbone).detach(), len(TEXTS))
    lora = lively_lora(backbone)
    backbone.model.eval()  # as evaluation does: peft's new modules start in training mode

    def check() -> torch.Tensor:
        with torch.no_grad():
            plain, reused = plain_and_reused(
                backbone, lambda: backbone.generate_ids(batch, prompt, NEW), passes=1
            )
        assert reused[0].tolist() == plain.tolist()
        return plain

    on = check()
    lora.set_enabled(False)
    off = check()
    assert off.tolist() != on.tolist()
    lora.set_enabled(True)
    assert check().tolist() == on.tolist()
    with torch.no_grad():  # an optimizer step's in-place update of the LoRA weights
        for param in lora_b(backbone):
            param.mul_(-1.0)
    assert check().tolist() != on.tolist()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_prefix_tuning_composes_with_reuse(tiny_models, kind) -> None:
    backbone = load_backbone(str(tiny_models[kind]))
    batch = text_batch(backbone)
    prompt = PromptInput.single(random_prompt(backbone).detach(), len(TEXTS))
    with torch.no_grad():
        bare = backbone.generate_ids(batch, prompt, NEW)
    settings = PrefixTuningSettings(enabled=True, num_virtual_tokens=3)
    prefix = PrefixTuner.create(settings, backbone, learning_rate=1.0, seed=0)
    backbone.model.eval()
    with torch.no_grad():
        plain, reused = plain_and_reused(
            backbone, lambda: backbone.generate_ids(batch, prompt, NEW)
        )
    assert all(ids.tolist() == plain.tolist() for ids in reused)
    assert plain.tolist() != bare.tolist()
    # A step on the prefix, then switching it off: both recompute the prompt's cache.
    with torch.no_grad():
        for param in prefix.encoder.parameters():
            param.mul_(-1.0)
        plain, reused = plain_and_reused(
            backbone, lambda: backbone.generate_ids(batch, prompt, NEW)
        )
        assert reused[0].tolist() == plain.tolist()
        prefix.set_enabled(False)
        assert backbone.generate_ids(batch, prompt, NEW).tolist() == bare.tolist()


def test_keys_made_under_autocast_are_not_served_to_a_float32_call(tiny_models) -> None:
    backbone = load_backbone(str(tiny_models["llama"]))
    batch = text_batch(backbone)
    prompt = PromptInput.single(random_prompt(backbone).detach(), len(TEXTS))
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            backbone.generate_ids(batch, prompt, NEW)
        plain, reused = plain_and_reused(
            backbone, lambda: backbone.generate_ids(batch, prompt, NEW), passes=1
        )
    assert reused[0].tolist() == plain.tolist()
    assert backbone.prompt_kv.misses == 2


def test_no_reuse_in_training_mode_without_a_prompt_or_in_seq2seq(tiny_models) -> None:
    backbone = load_backbone(str(tiny_models["llama"]))
    prompt = PromptInput.single(random_prompt(backbone).detach(), 2)
    config = greedy_config(backbone.model, backbone.tokenizer, 3)
    plan = backbone.prompt_kv.plan
    assert plan(backbone.model, prompt, 0, config, torch.float32) is not None
    assert plan(backbone.model, prompt, 2, config, torch.float32) is None  # not leading
    assert plan(backbone.model, None, 0, config, torch.float32) is None
    backbone.model.train()
    assert plan(backbone.model, prompt, 0, config, torch.float32) is None
    # T5: the encoder attends both ways; generation keeps its one path.
    assert load_backbone(str(tiny_models["t5"])).prompt_kv is None


def vision_rows(images: dict[str, list[Path]]) -> list[VisionExample]:
    texts = ["what color is it", "a", "is it red or blue today", "say"]
    paths = [p for ps in images.values() for p in ps]
    return [
        VisionExample(id=str(i), image_path=str(p), text=t)
        for i, (p, t) in enumerate(zip(paths, texts, strict=True))
    ]


def vlm_ids(backbone, batch, prompt, prefix) -> torch.Tensor:
    position = prompt_position(backbone.placement, prefix.shape[1])
    return backbone.lm.generate_ids(batch, prompt, NEW, prefix, position)


@pytest.mark.parametrize("placement", ["before_image", "after_image"])
def test_composed_model_reuses_a_prompt_before_the_image(
    tiny_clip, images, tiny_models, placement
) -> None:
    torch.manual_seed(0)
    settings = VisionSettings(
        vision_encoder=str(tiny_clip),
        language_model=str(tiny_models["gpt2"]),
        placement=placement,
    )
    backbone = ComposedVLMBackbone.from_pretrained(None, "tiny", torch.float32, settings)
    backbone.model.eval()
    rows = vision_rows(images)
    batch = backbone.collate(rows, ENC, with_targets=False)
    prompt = PromptInput.single(random_prompt(backbone).detach(), len(rows))
    with torch.no_grad():
        prefix = backbone.image_prefix(batch["image_paths"])
        plain, reused = plain_and_reused(
            backbone.lm,
            lambda: vlm_ids(backbone, batch, prompt, prefix),
            reuses=placement == "before_image",  # after the image the prompt does not lead
        )
    assert all(ids.tolist() == plain.tolist() for ids in reused)
    assert_not_degenerate(plain)


def test_blip2_opt_reuses_and_blip2_t5_does_not(tiny_vlms, images) -> None:
    backbone = Blip2Backbone.from_pretrained(
        str(tiny_vlms["blip2-opt"]), "blip2-opt", torch.float32, VisionSettings()
    )
    backbone.model.eval()
    rows = vision_rows(images)
    batch = backbone.collate(rows, ENC, with_targets=False)
    prompt = PromptInput.single(random_prompt(backbone).detach(), len(rows))
    with torch.no_grad():
        prefix = backbone.image_prefix(batch)
        plain, reused = plain_and_reused(
            backbone.lm, lambda: vlm_ids(backbone, batch, prompt, prefix)
        )
    assert all(ids.tolist() == plain.tolist() for ids in reused)
    assert_not_degenerate(plain)
    assert (backbone.lm.prompt_kv.misses, backbone.lm.prompt_kv.hits) == (1, 1)
    t5 = Blip2Backbone.from_pretrained(
        str(tiny_vlms["blip2-t5"]), "blip2-t5", torch.float32, VisionSettings()
    )
    assert t5.lm.prompt_kv is None
