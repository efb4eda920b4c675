"""Adapter bundles: every adapter of a run in PEFT's format, under one manifest.

A run whose only adapter is a soft prompt saves a plain prompt directory, exactly as
before (PEFT loads it at the root); `softprompt.json` then also lists it under
`adapters`. A run with several adapters (prompt + LoRA, LoRA alone, full fine-tuning)
saves one directory per adapter (`prompt/`, `lora/`, `full/`), each loadable on its own
(`PeftModel.from_pretrained` for prompt and LoRA, `from_pretrained` for full), and a root
`softprompt.json` manifest: base model, fingerprint, task, and each adapter's directory,
method and whether it is on. Trainable backbone extras (a projection) go with the prompt,
or into `modules.safetensors` when there is no prompt.

`read_bundle` reads any of the on-disk formats: the first in `FORMATS` whose `detect`
says yes reads the directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from softprompt.artifacts.bank import BankDir, read_bank_extras
from softprompt.artifacts.manifest import (
    META_FILE,
    MODULES_FILE,
    PromptLoadError,
    add_to_manifest,
    load_tensors,
    manifest_format,
    model_fields,
    read_json_object,
    save_tensors,
    tree_files,
    verify_manifest_files,
    write_manifest,
)
from softprompt.artifacts.peft_files import PeftPrefixDir
from softprompt.artifacts.prompt_dir import PromptDir, load_prompt
from softprompt.artifacts.saved import Adapter, Bundle

BUNDLE_FORMAT = "softprompt-bundle"

__all__ = ["FORMATS", "Adapter", "Bundle", "BundleDir", "read_bundle", "write_bundle"]


class BundleDir:
    """The multi-adapter bundle format (`softprompt-bundle`): a manifest at the root,
    one directory per adapter below it."""

    @staticmethod
    def detect(directory: Path) -> bool:
        """True when the directory's manifest names the bundle format."""
        return manifest_format(directory) == BUNDLE_FORMAT

    @staticmethod
    def read(directory: Path) -> Bundle:
        """The bundle's adapters, its files verified; the prompt adapter read once.

        Raises:
            PromptLoadError: a damaged manifest or adapter entry, or a tampered file.
        """
        directory = Path(directory)
        meta = read_json_object(directory / META_FILE)
        verify_manifest_files(directory, meta, "bundle")
        raw = meta.get("adapters")
        if not isinstance(raw, dict) or not raw:
            raise PromptLoadError(f"{directory / META_FILE}: no 'adapters' listed")
        adapters = {}
        for name, entry in raw.items():
            if not isinstance(entry, dict) or entry.get("path") != name:
                raise PromptLoadError(f"{directory / META_FILE}: bad entry for adapter {name!r}")
            adapters[name] = Adapter(
                directory / name, str(entry.get("method")), bool(entry.get("enabled", True))
            )
        prompt_adapter = adapters.get("prompt")
        if prompt_adapter is not None and prompt_adapter.method == "prompt_bank":
            return Bundle(directory, meta, adapters, read_bank_extras(prompt_adapter.path))
        if prompt_adapter is not None:
            prompt = load_prompt(prompt_adapter.path)
            return Bundle(directory, meta, adapters, prompt.extra, prompt)
        extras = {}
        if (directory / MODULES_FILE).is_file():
            extras = load_tensors(directory / MODULES_FILE)
        return Bundle(directory, meta, adapters, extras)

    @staticmethod
    def write(
        directory: Path,
        context: dict[str, Any],
        adapters: dict[str, dict[str, Any]],
        extras: dict[str, torch.Tensor],
    ) -> None:
        """The extras and the manifest of a bundle whose adapter directories are written.

        Args:
            context: family, base_model, fingerprint, placement, task.
            adapters: adapter name -> {"path", "method", "enabled"}.
            extras: the backbone's trainable state when no prompt carries it ({} else),
                into `modules.safetensors`.
        """
        if extras:
            save_tensors(directory / MODULES_FILE, extras)
        fields = {**model_fields(context), "task": context.get("task") or {}, "adapters": adapters}
        files = tree_files(directory, nested_manifests=False)
        write_manifest(directory, BUNDLE_FORMAT, fields, files)


# Detection order: a bank and a bundle name their format in the manifest; a PEFT prefix
# has no manifest; a prompt directory (ours or PEFT's) is what is left.
FORMATS = (BankDir, PeftPrefixDir, BundleDir, PromptDir)


def read_bundle(directory: str | Path) -> Bundle:
    """Read a bundle, a bank, a prompt directory of ours, or a prompt or prefix PEFT saved.

    Raises:
        PromptLoadError: missing, damaged or tampered-with files.
    """
    directory = Path(directory)
    # Nothing detected: reading it as a prompt directory says what is missing or wrong.
    found = next((f for f in FORMATS if f.detect(directory)), PromptDir)
    return found.read(directory)


def write_bundle(
    directory: Path, tuners: list, context: dict[str, Any], extras: dict[str, torch.Tensor]
) -> None:
    """Save `tuners` (those with an adapter name) under `directory`.

    Args:
        tuners: the run's tuners; ones with an empty `adapter` are carried by `extras`.
        context: family, base_model, fingerprint, task, placement (for every adapter).
        extras: the backbone's `state_for_save()` (may be empty).
    """
    directory = Path(directory)
    savable = [t for t in tuners if t.adapter]
    prompt = next((t for t in savable if t.adapter == "prompt"), None)
    if prompt is not None and len(savable) == 1:
        prompt.save(directory, {**context, "extra": extras})
        add_to_manifest(directory, {"adapters": {"prompt": _entry(".", prompt)}})
        return
    directory.mkdir(parents=True, exist_ok=True)
    for tuner in savable:
        own = {**context, "extra": extras if tuner is prompt else None}
        tuner.save(directory / tuner.adapter, own)
    adapters = {t.adapter: _entry(t.adapter, t) for t in savable}
    BundleDir.write(directory, context, adapters, extras if prompt is None else {})


def _entry(path: str, tuner) -> dict[str, Any]:
    return {"path": path, "method": tuner.saved_method, "enabled": bool(tuner.enabled)}
