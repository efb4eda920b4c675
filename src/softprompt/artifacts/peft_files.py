"""Reading adapter directories in PEFT's on-disk format, whichever method wrote them."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from softprompt.artifacts.manifest import META_FILE
from softprompt.artifacts.prompt_dir import CONFIG_FILE, PromptLoadError
from softprompt.artifacts.prompt_dir import read_adapter_weights as _read_prompt_weights
from softprompt.artifacts.saved import Adapter, Bundle


class PeftFileError(PromptLoadError):
    """An adapter directory is missing, damaged, or does not fit the base model."""


def read_adapter_weights(directory: Path) -> dict[str, torch.Tensor]:
    """`adapter_model.safetensors` (or an older PEFT `adapter_model.bin`, tensors only)."""
    try:
        return _read_prompt_weights(Path(directory))
    except PromptLoadError as err:
        raise PeftFileError(str(err)) from None


class PeftPrefixDir:
    """A PREFIX_TUNING adapter PEFT saved: one adapter, no manifest of ours. We write
    prefixes only inside bundles (the prefix tuner writes PEFT's files itself)."""

    @staticmethod
    def detect(directory: Path) -> bool:
        """True for a PEFT prefix directory that names its base model."""
        return _peft_prefix_base(Path(directory)) is not None

    @staticmethod
    def read(directory: Path) -> Bundle:
        """The prefix as a one-adapter bundle (`prefix`, method `prefix_tuning`); its
        weights are read by the prefix tuner's loader."""
        directory = Path(directory)
        adapters = {"prefix": Adapter(directory, "prefix_tuning")}
        return Bundle(directory, {"base_model": _peft_prefix_base(directory)}, adapters)


def _peft_prefix_base(directory: Path) -> str | None:
    """The base model a PEFT PREFIX_TUNING directory names, or None for anything else."""
    if (directory / META_FILE).is_file() or not (directory / CONFIG_FILE).is_file():
        return None
    try:
        raw = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("peft_type") != "PREFIX_TUNING":
        return None
    return str(raw.get("base_model_name_or_path") or "") or None
