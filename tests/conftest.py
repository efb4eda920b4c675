"""Session-wide tiny backbones and shared fixtures.

Every checkpoint is built once per session from a config written in tiny_checkpoints.py
(random weights, tokenizers trained on the fly) and saved with `save_pretrained`, so tests
load it through the same `from_pretrained` path a user's hub checkpoint takes. Tests treat
these directories as read-only. Builders of configs and data live in helpers.py.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import torch
from helpers import colour_images, toy_task, write_jsonl
from tiny_checkpoints import (
    CONTRASTIVE_KINDS,
    KINDS,
    TEXT_KINDS,
    build_contrastive,
    build_text_model,
    build_tiny_clip,
    build_vlm,
)


def _keep_absl_off_captured_streams() -> None:
    """Point absl's log handler (rouge-score imports absl) at the real stderr.

    absl binds its handler to whatever sys.stderr is when it is imported, which under
    pytest is a capture stream. Gradio starts uvicorn, whose logging.config.dictConfig
    closes every handler; absl's close() then closes that capture stream, and pytest
    fails at the next read of its captured output.
    """
    try:
        from absl import logging as absl_logging
    except ImportError:
        return
    absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__


_keep_absl_off_captured_streams()

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class LazyCheckpoints(Mapping[str, Path]):
    """kind -> checkpoint directory, each built the first time a test asks for it."""

    def __init__(self, kinds: tuple[str, ...], build: Callable[[str], Path]) -> None:
        self._kinds = kinds
        self._build = build
        self._built: dict[str, Path] = {}

    def __getitem__(self, kind: str) -> Path:
        if kind not in self._kinds:
            raise KeyError(kind)
        if kind not in self._built:
            self._built[kind] = self._build(kind)
        return self._built[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)


@pytest.fixture
def one_thread():
    """torch on one thread for the test: tiny models on a shared 2-core machine run
    fastest that way, and subprocess-driven tests match their one-thread children."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Mapping[str, Path]:
    """Directories of tiny GPT-2, Llama and T5 checkpoints (built on first use)."""
    root = tmp_path_factory.mktemp("models")
    return LazyCheckpoints(TEXT_KINDS, lambda kind: build_text_model(kind, root))


@pytest.fixture(scope="session")
def tiny_vlms(tmp_path_factory) -> Mapping[str, Path]:
    """Directories of tiny BLIP-2 / InstructBLIP checkpoints with their processors, by kind
    (`tiny_checkpoints.KINDS`: blip2-opt, blip2-t5, instructblip-opt, instructblip-t5)."""
    root = tmp_path_factory.mktemp("vlms")
    return LazyCheckpoints(KINDS, lambda kind: build_vlm(kind, root))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    """A tiny CLIP vision tower + image processor: the composed VLM's encoder."""
    return build_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="session")
def tiny_contrastive(tmp_path_factory) -> Mapping[str, Path]:
    """Directories of a tiny CLIPModel and SiglipModel with tokenizer and image processor
    (`tiny_checkpoints.CONTRASTIVE_KINDS`), loaded as a hub id would be."""
    root = tmp_path_factory.mktemp("contrastive")
    return LazyCheckpoints(CONTRASTIVE_KINDS, lambda kind: build_contrastive(kind, root))


@pytest.fixture(scope="session")
def colour_pngs(tmp_path_factory) -> dict[str, list[Path]]:
    """Three small PNGs per colour (red, blue), shared read-only by the session."""
    return colour_images(tmp_path_factory.mktemp("images"))


@pytest.fixture
def toy_data(tmp_path) -> dict[str, Path]:
    return {
        "train": write_jsonl(tmp_path / "data" / "train.jsonl", toy_task(48, seed=1)),
        "val": write_jsonl(tmp_path / "data" / "val.jsonl", toy_task(12, seed=2)),
    }
