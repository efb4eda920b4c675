"""Reading adapter directories in PEFT's on-disk format, whichever method wrote them."""

from __future__ import annotations

from pathlib import Path

import torch

from softprompt.artifacts.prompt_dir import PromptLoadError
from softprompt.artifacts.prompt_dir import read_adapter_weights as _read_prompt_weights


class PeftFileError(PromptLoadError):
    """An adapter directory is missing, damaged, or does not fit the base model."""


def read_adapter_weights(directory: Path) -> dict[str, torch.Tensor]:
    """`adapter_model.safetensors` (or an older PEFT `adapter_model.bin`, tensors only)."""
    try:
        return _read_prompt_weights(Path(directory))
    except PromptLoadError as err:
        raise PeftFileError(str(err)) from None
