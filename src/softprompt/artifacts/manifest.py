"""`softprompt.json`, the manifest every directory format of ours writes, and the file
helpers the formats share.

A manifest names its format and format version, says what the files were trained on
(family, base model, fingerprint, task) and lists the SHA-256 of every file it covers,
so a directory changed after saving is refused on load. The field order is part of the
format: the same save writes the same bytes, so checkpoints of one run compare equal.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from softprompt.errors import UserError

META_FILE = "softprompt.json"
MODULES_FILE = "modules.safetensors"
FORMAT_VERSION = 1


class PromptLoadError(UserError):
    """A saved prompt, bank or bundle is missing, damaged, or does not fit the base model."""


def sha256_file(path: Path) -> str:
    """The file's SHA-256 as hex, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object.

    Raises:
        PromptLoadError: not JSON, or JSON but not an object.
    """
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise PromptLoadError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise PromptLoadError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def manifest_format(directory: Path) -> str | None:
    """The `format` a directory's manifest names; None without a readable one."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        return None
    try:
        return read_json_object(path).get("format")
    except PromptLoadError:
        return None


def model_fields(context: dict[str, Any]) -> dict[str, Any]:
    """What a bank's or bundle's manifest records about the base model, in its order."""
    return {
        "family": context["family"],
        "base_model": context["base_model"],
        "fingerprint": context["fingerprint"],
        "placement": context.get("placement", "prepend"),
    }


def tree_files(directory: Path, *, nested_manifests: bool) -> list[str]:
    """Every file under `directory` but its own manifest, as relative POSIX names.

    Args:
        nested_manifests: also list the manifests of directories below (a bank covers
            its members' `softprompt.json`; a bundle never covered them).
    """
    names = []
    for path in sorted(directory.rglob("*")):  # sorted as paths: the order manifests hold
        name = path.relative_to(directory).as_posix()
        skipped = name == META_FILE or (not nested_manifests and path.name == META_FILE)
        if path.is_file() and not skipped:
            names.append(name)
    return names


def write_manifest(
    directory: Path,
    format_name: str,
    fields: dict[str, Any],
    files: list[str],
    tail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `directory/softprompt.json`: format, version, `fields`, checksums, `tail`.

    Args:
        format_name: "softprompt-prompt", "softprompt-prompt-bank", "softprompt-bundle".
        fields: the format's own fields, in the order they are written.
        files: relative names of the files to checksum (written before this call).
        tail: fields written after the checksums (where older versions put them).

    Returns:
        The manifest as written.
    """
    manifest = {"format": format_name, "format_version": FORMAT_VERSION, **fields}
    manifest["files"] = {name: sha256_file(directory / name) for name in files}
    manifest.update(tail or {})
    _write_json(directory / META_FILE, manifest)
    return manifest


def add_to_manifest(directory: Path, fields: dict[str, Any]) -> None:
    """Add fields at the end of an existing manifest (checksums stay as they are)."""
    path = Path(directory) / META_FILE
    _write_json(path, {**read_json_object(path), **fields})


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")


def verify_manifest_files(directory: Path, meta: dict[str, Any], what: str) -> None:
    """Check every file a manifest lists (`files`: relative name -> SHA-256).

    Raises:
        PromptLoadError: a malformed list, a name leading outside `directory`, or a file
            that is missing or changed since the `what` (bundle, bank) was saved.
    """
    files = meta.get("files")
    if not isinstance(files, dict):
        raise PromptLoadError(f"{directory / META_FILE}: 'files' must map names to checksums")
    for name, expected in files.items():
        parts = name.split("/") if isinstance(name, str) else [""]
        if any(p in ("", ".", "..") or "\\" in p for p in parts):
            raise PromptLoadError(f"{directory / META_FILE}: bad file name {name!r}")
        path = Path(directory).joinpath(*parts)
        if not path.is_file() or sha256_file(path) != expected:
            raise PromptLoadError(
                f"{path}: missing or does not match {META_FILE}; the {what} was modified or "
                "damaged after it was saved"
            )


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Tensors as float32 safetensors on the CPU, with PEFT's one metadata key.

    One key only: safetensors writes several in no fixed order, and saves of the same
    state must be byte-identical.
    """
    state = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    save_file(state, str(path), metadata={"format": "pt"})


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file of ours.

    Raises:
        PromptLoadError: the file is not readable safetensors.
    """
    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise PromptLoadError(f"{path}: unreadable ({err})") from None
