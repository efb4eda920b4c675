"""The prompt bank's directory: one prompt directory per member under one manifest.

`BANK/<name>/` is an ordinary prompt directory (PEFT's PROMPT_TUNING format, loadable on
its own); `modules.safetensors` holds the backbone's trainable extras; `softprompt.json`
lists the members, each with the task record it was trained for, and the SHA-256 of every
file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from softprompt.artifacts.prompt_dir import (
    META_FILE,
    PromptLoadError,
    _read_json_object,
    verify_manifest_files,
)

BANK_FORMAT = "softprompt-prompt-bank"
MODULES_FILE = "modules.safetensors"


def is_bank(directory: Path) -> bool:
    meta = Path(directory) / META_FILE
    if not meta.is_file():
        return False
    try:
        return _read_json_object(meta).get("format") == BANK_FORMAT
    except PromptLoadError:
        return False


def read_bank_meta(directory: Path) -> dict[str, Any]:
    """A bank's manifest, its members checked and its files verified.

    Raises:
        PromptLoadError: a damaged manifest, a member outside the bank, or a file that
            is missing or was changed after saving.
    """
    meta = _read_json_object(Path(directory) / META_FILE)
    members = meta.get("members")
    if not isinstance(members, dict) or not members:
        raise PromptLoadError(f"{directory / META_FILE}: no 'members' listed")
    for name, entry in members.items():
        if (
            not isinstance(entry, dict)
            or entry.get("path") != name
            or "/" in name
            or name in ("", ".", "..")
        ):
            raise PromptLoadError(f"{directory / META_FILE}: bad entry for prompt {name!r}")
    verify_manifest_files(Path(directory), meta, "bank")
    return meta


def read_bank_extras(directory: Path) -> dict[str, torch.Tensor]:
    path = Path(directory) / MODULES_FILE
    if not path.is_file():
        return {}
    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise PromptLoadError(f"{path}: unreadable ({err})") from None
