"""The vLLM prompt-embeds directory: a soft prompt exported for `vllm serve --enable-prompt-embeds`.

`softprompt export PROMPT --format vllm-prompt-embeds --output DIR` writes two files:

- `prompt_embeds.pt`: the soft prompt, a (P, D) tensor in the dtype the base model runs
  in, written by `torch.save` (vLLM reads `prompt_embeds` as base64 of exactly that);
- `softprompt.json`: the manifest every format of ours writes (format, base model, family,
  fingerprint, the file's SHA-256) plus what a client needs to build the rest of the input
  as our splice does for causal LMs: where the prompt goes, the task's template and input
  field, the tokenization (length limit, the special tokens around the text) and the
  generation length.

A client with this directory and the base model builds each request's `prompt_embeds`:
`[soft prompt; token embeddings of the templated text]` (see
`softprompt.workflows.vllm_client`).
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from softprompt.artifacts.manifest import (
    META_FILE,
    PromptLoadError,
    check_finite,
    manifest_format,
    read_json_object,
    verify_manifest_files,
    write_manifest,
)
from softprompt.backbones.loading import DTYPES

VLLM_FORMAT = "softprompt-vllm-prompt-embeds"
EMBEDS_FILE = "prompt_embeds.pt"


@dataclass(frozen=True)
class PromptEmbedsExport:
    """An exported prompt as read from disk.

    Attributes:
        directory: where it was read from.
        prompt: (P, D) the soft prompt, in `dtype`.
        meta: the manifest (see `VllmEmbedsDir.write` for its fields).
    """

    directory: Path
    prompt: torch.Tensor
    meta: dict[str, Any]

    @property
    def base_model(self) -> str:
        return str(self.meta["base_model"])

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.meta["dtype"]]

    @property
    def prompt_position(self) -> int:
        return int(self.meta["prompt_position"])

    @property
    def input(self) -> dict[str, Any]:
        """template, input_field, max_input_length, special tokens around the text."""
        return dict(self.meta["input"])

    @property
    def max_new_tokens(self) -> int:
        return int(self.meta["generation"]["max_new_tokens"])


class VllmEmbedsDir:
    """The `softprompt-vllm-prompt-embeds` format: detect, read, write."""

    @staticmethod
    def detect(directory: Path) -> bool:
        """True when the directory's manifest names this format."""
        return manifest_format(Path(directory)) == VLLM_FORMAT

    @staticmethod
    def write(directory: Path, prompt: torch.Tensor, fields: dict[str, Any]) -> dict[str, Any]:
        """Write the prompt tensor and the manifest into an existing directory.

        Args:
            prompt: (P, D) the soft prompt in the dtype it is served in.
            fields: family, base_model, fingerprint, placement, dtype, num_virtual_tokens,
                hidden_size, prompt_position, input, generation, task, source (in the
                order they are written).

        Returns:
            The manifest as written.
        """
        directory = Path(directory)
        # A contiguous copy: torch.save writes a view's whole storage, not just the view.
        torch.save(prompt.detach().cpu().contiguous().clone(), directory / EMBEDS_FILE)
        return write_manifest(directory, VLLM_FORMAT, fields, [EMBEDS_FILE])

    @staticmethod
    def read(directory: str | Path) -> PromptEmbedsExport:
        """The exported prompt, its checksum and shape checked against the manifest.

        Raises:
            PromptLoadError: not such a directory, a damaged or changed file, or a tensor
                that disagrees with the manifest (names the file and what differs).
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise PromptLoadError(f"vLLM prompt export not found: {directory}")
        if not VllmEmbedsDir.detect(directory):
            raise PromptLoadError(
                f"{directory}: not a vLLM prompt export (its {META_FILE} does not name "
                f"{VLLM_FORMAT!r}); write one with `softprompt export PROMPT --format "
                "vllm-prompt-embeds --output DIR`"
            )
        meta = read_json_object(directory / META_FILE)
        verify_manifest_files(directory, meta, "export")
        _check_fields(directory / META_FILE, meta)
        prompt = _load_tensor(directory / EMBEDS_FILE)
        expected = (meta["num_virtual_tokens"], meta["hidden_size"])
        if prompt.ndim != 2 or tuple(prompt.shape) != expected:
            raise PromptLoadError(
                f"{directory / EMBEDS_FILE}: a {tuple(prompt.shape)} tensor, but {META_FILE} "
                f"says {expected}; export the prompt again"
            )
        if prompt.dtype != DTYPES[meta["dtype"]]:
            raise PromptLoadError(
                f"{directory / EMBEDS_FILE}: dtype {prompt.dtype}, but {META_FILE} says "
                f"{meta['dtype']}; export the prompt again"
            )
        return PromptEmbedsExport(directory, prompt, meta)


# What a client reads; `dtype` is one our loader loads a model in (and vLLM accepts).
REQUIRED = (
    "base_model",
    "family",
    "dtype",
    "num_virtual_tokens",
    "hidden_size",
    "prompt_position",
    "input",
    "generation",
)


def _check_fields(path: Path, meta: dict[str, Any]) -> None:
    """Refuse a manifest lacking a field a client needs, or with a dtype vLLM cannot take."""
    missing = [key for key in REQUIRED if key not in meta]
    if missing:
        raise PromptLoadError(f"{path}: missing {', '.join(missing)}; export the prompt again")
    if meta["dtype"] not in DTYPES:
        raise PromptLoadError(f"{path}: dtype {meta['dtype']!r} is not one of {', '.join(DTYPES)}")
    if not isinstance(meta["input"], dict) or not isinstance(meta.get("generation"), dict):
        raise PromptLoadError(f"{path}: 'input' and 'generation' must be objects")


def _load_tensor(path: Path) -> torch.Tensor:
    """One tensor written by `torch.save`; weights_only refuses anything else (no code runs)."""
    try:
        tensor = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise PromptLoadError(f"{path}: unreadable or not a plain tensor ({err})") from None
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        raise PromptLoadError(f"{path}: expected one floating-point tensor")
    check_finite(path, {"prompt_embeds": tensor})
    return tensor
