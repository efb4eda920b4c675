"""Builders the tests share: run configs, toy text data, and small PNG images.

Tests import them with `from helpers import ...` (pytest puts tests/ on `sys.path`).
Model checkpoints are built in tiny_checkpoints.py and handed out by conftest.py's
session fixtures.
"""

from __future__ import annotations

import copy
import io
import json
import random
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image

IMAGE_SIZE = 32
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}
# `data` keys of `make_config` -> the config's data section keys.
SPLIT_KEYS = {"train": "train_path", "val": "val_test_path", "test": "test_path"}


def prompt_method(**settings: Any) -> dict[str, Any]:
    """A `method:` section with a random-initialised soft prompt of 4 tokens (or `settings`)."""
    return {"prompt_tuning": {"num_virtual_tokens": 4, "init_method": "RANDOM", **settings}}


def make_config(
    model: str | Path,
    data: Mapping[str, Any] | None,
    out: str | Path,
    *,
    method: Mapping[str, Any] | None = None,
    task: Mapping[str, Any] | None = None,
    model_options: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A run config as the mapping a YAML file holds (`build_config` makes it a RunConfig).

    Nothing is filled in behind the caller's back beyond what it names, so a test's config
    says exactly what differs from the defaults.

    Args:
        model: `model.name_or_path`.
        data: "train" / "val" / "test" -> a file or folder (`train_path`, `val_test_path`,
            `test_path`); any other key is copied into the data section as it is. None: no
            data section (a multi-task config names each task's data).
        out: `training.output_dir`.
        method: the `method:` section (default: `prompt_method()`).
        task: the `task:` section (left out when None: text2text).
        model_options: more `model:` keys (`vision_encoder`, `dtype`, ...).
        training: a test file's usual `training:` keys; `overrides` go on top.
        **overrides: `training:` keys of this one config.
    """
    raw: dict[str, Any] = {
        "model": {"name_or_path": str(model), **(model_options or {})},
        "method": copy.deepcopy(dict(method if method is not None else prompt_method())),
        "training": {"output_dir": str(out), **(training or {}), **overrides},
    }
    if data is not None:
        raw["data"] = {
            SPLIT_KEYS.get(k, k): str(v) if isinstance(v, Path) else v for k, v in data.items()
        }
    if task is not None:
        raw["task"] = copy.deepcopy(dict(task))
    return raw


def write_config(path: Path, raw: Mapping[str, Any], command: str = "train") -> Path:
    """Write `raw` as YAML under the comment every config file starts with; returns `path`."""
    header = f"# softprompt {command} {path.name}\n"
    path.write_text(header + yaml.safe_dump(dict(raw)), encoding="utf-8")
    return path


def toy_task(n: int, seed: int = 0) -> list[dict[str, str]]:
    """A learnable mapping: the target is the colour word the input mentions."""
    rng = random.Random(seed)
    colors = ["red", "blue", "green"]
    rows = []
    for i in range(n):
        color = rng.choice(colors)
        words = [
            rng.choice(["cat", "dog", "bird", "house", "tree"]) for _ in range(rng.randint(1, 4))
        ]
        words.insert(rng.randint(0, len(words)), color)
        rows.append({"id": f"ex{i}", "input": " ".join(words), "target": color})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """One JSON object per line (parent folders made); returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def count_task(n: int, seed: int) -> list[dict[str, str]]:
    """A second toy task: say how many words the input has."""
    rng = random.Random(seed)
    names = ["one", "two", "three"]
    rows = []
    for i in range(n):
        k = rng.randint(1, 3)
        words = " ".join(rng.choice(["cat", "dog", "tree"]) for _ in range(k))
        rows.append({"id": f"c{i}", "input": words, "target": names[k - 1]})
    return rows


def multitask_config(tmp_path: Path, model_dir: Path, **extra: Any) -> Path:
    """config.yaml of a two-task run (colour: 3 prompt tokens, count: 5) with its data files;
    `extra` adds top-level sections (`task_sampling`, ...)."""
    data = tmp_path / "data"
    colour = {
        "train_path": str(write_jsonl(data / "colour_train.jsonl", toy_task(24, seed=1))),
        "val_test_path": str(write_jsonl(data / "colour_val.jsonl", toy_task(6, seed=2))),
    }
    count = {
        "train_path": str(write_jsonl(data / "count_train.jsonl", count_task(12, seed=3))),
        "val_test_path": str(write_jsonl(data / "count_val.jsonl", count_task(6, seed=4))),
        "test_path": str(write_jsonl(data / "count_test.jsonl", count_task(4, seed=5))),
    }
    raw = make_config(
        model_dir,
        None,
        tmp_path / "run",
        task={"max_new_tokens": 2},
        max_steps=3,
        batch_size=6,
        learning_rate=0.1,
        eval_steps=3,
    )
    raw["tasks"] = [
        {"name": "colour", "num_virtual_tokens": 3, "data": colour},
        {"name": "count", "num_virtual_tokens": 5, "data": count},
    ]
    return write_config(tmp_path / "config.yaml", {**raw, **extra})


def _colour_pixels(per_colour: int):
    """(colour, index, pixels): solid colours with a little noise, the same on every call."""
    gen = torch.Generator().manual_seed(0)
    for name, rgb in COLOURS.items():
        for i in range(per_colour):
            base = torch.tensor(rgb, dtype=torch.float32).view(1, 1, 3)
            noise = torch.randint(-20, 21, (IMAGE_SIZE, IMAGE_SIZE, 3), generator=gen)
            yield name, i, (base + noise).clamp(0, 255).to(torch.uint8).numpy()


def colour_images(directory: Path, per_colour: int = 3) -> dict[str, list[Path]]:
    """Small solid-colour PNGs in one folder (`red0.png`, ...); colour name -> paths."""
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[Path]] = {name: [] for name in COLOURS}
    for name, i, pixels in _colour_pixels(per_colour):
        path = directory / f"{name}{i}.png"
        Image.fromarray(pixels).save(path)
        out[name].append(path)
    return out


def image_folders(root: Path, per_class: int = 3, classes: Sequence[str] | None = None) -> Path:
    """An image-classification folder: `root/<class>/<colour><i>.png`, one colour per class.

    Args:
        per_class: images in each class folder.
        classes: the folder names, one per colour of `COLOURS` (default: the colour names).
    """
    names = dict(zip(COLOURS, classes or COLOURS, strict=True))
    for colour, i, pixels in _colour_pixels(per_class):
        folder = root / names[colour]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{colour}{i}.png")
    return root


def class_folders(root: Path, classes: Sequence[str], per_class: int = 2) -> Path:
    """`root/<class>/*.png` for any even number of classes (colours alternate)."""
    if len(classes) % 2:
        raise ValueError("class_folders takes an even number of classes (two colours)")
    for start in range(0, len(classes), 2):
        image_folders(root, per_class, classes[start : start + 2])
    return root


def png_bytes(size=(8, 8), colour=(200, 30, 30)) -> bytes:
    """A small solid-colour PNG file's bytes."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A small PNG whose header claims a huge size (what a decompression bomb looks like)."""
    data = bytearray(png_bytes())
    ihdr = bytearray(data[12:29])  # chunk type + 13 bytes of IHDR data
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def toy_run_config(tmp_path: Path, model: str | Path, **training) -> Path:
    """TMP/config.yaml: a prompt run on the toy task (48 train, 8 val) into TMP/run."""
    data = {
        "train": write_jsonl(tmp_path / "data" / "train.jsonl", toy_task(48, seed=1)),
        "val": write_jsonl(tmp_path / "data" / "val.jsonl", toy_task(8, seed=2)),
    }
    raw = make_config(
        model,
        data,
        tmp_path / "run",
        task={"max_new_tokens": 2},
        batch_size=8,
        logging_steps=1,
        eval_generate=False,
        **training,
    )
    return write_config(tmp_path / "config.yaml", raw)
