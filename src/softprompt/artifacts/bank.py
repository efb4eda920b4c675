"""The prompt bank's directory: one prompt directory per member under one manifest.

`BANK/<name>/` is an ordinary prompt directory (PEFT's PROMPT_TUNING format, loadable on
its own); `modules.safetensors` holds the backbone's trainable extras; `softprompt.json`
lists the members, each with the task record it was trained for, and the SHA-256 of every
file (the members' own manifests included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from softprompt.artifacts.manifest import (
    META_FILE,
    MODULES_FILE,
    PromptLoadError,
    load_tensors,
    manifest_format,
    model_fields,
    read_json_object,
    save_tensors,
    tree_files,
    verify_manifest_files,
    write_manifest,
)
from softprompt.artifacts.saved import Adapter, Bundle

BANK_FORMAT = "softprompt-prompt-bank"


class BankDir:
    """The prompt bank format (`softprompt-prompt-bank`)."""

    @staticmethod
    def detect(directory: Path) -> bool:
        """True when the directory's manifest names the bank format."""
        return manifest_format(directory) == BANK_FORMAT

    @staticmethod
    def read(directory: Path) -> Bundle:
        """The bank as a one-adapter bundle (`prompt`, method `prompt_bank`), its manifest
        verified; the members are read by the bank's loader."""
        directory = Path(directory)
        meta = read_bank_meta(directory)
        adapters = {"prompt": Adapter(directory, "prompt_bank")}
        return Bundle(directory, meta, adapters, read_bank_extras(directory))

    @staticmethod
    def write(
        directory: Path,
        names: list[str],
        records: dict[str, dict[str, Any]],
        kind: str,
        context: dict[str, Any],
        extras: dict[str, torch.Tensor],
    ) -> None:
        """The extras and the manifest of a bank whose member directories are written.

        Args:
            names: the members in bank order (each a prompt directory `directory/<name>`).
            records: name -> the task record it was trained for (may lack some names).
            kind: "tasks" or "ensemble".
            context: family, base_model, fingerprint, placement, task (the run's).
            extras: the backbone's trainable state, into `modules.safetensors`.
        """
        directory = Path(directory)
        if extras:
            save_tensors(directory / MODULES_FILE, extras)
        fields = {
            "kind": kind,
            **model_fields(context),
            "task": records.get(names[0], context.get("task") or {}),
            "members": {n: {"path": n, "task": records.get(n, {})} for n in names},
        }
        write_manifest(directory, BANK_FORMAT, fields, tree_files(directory, nested_manifests=True))


def read_bank_meta(directory: Path) -> dict[str, Any]:
    """A bank's manifest, its members checked and its files verified.

    Raises:
        PromptLoadError: a damaged manifest, a member outside the bank, or a file that
            is missing or was changed after saving.
    """
    meta = read_json_object(Path(directory) / META_FILE)
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
    """The backbone's trainable state saved with the bank ({} when there is none)."""
    path = Path(directory) / MODULES_FILE
    return load_tensors(path) if path.is_file() else {}
