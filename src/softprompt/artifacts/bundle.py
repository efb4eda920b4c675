"""Adapter bundles: every adapter of a run in PEFT's format, under one manifest.

A run whose only adapter is a soft prompt saves a plain prompt directory, exactly as
before (PEFT loads it at the root); `softprompt.json` then also lists it under
`adapters`. A run with several adapters (prompt + LoRA, LoRA alone, full fine-tuning)
saves one directory per adapter (`prompt/`, `lora/`, `full/`), each loadable on its own
(`PeftModel.from_pretrained` for prompt and LoRA, `from_pretrained` for full), and a root
`softprompt.json` manifest: base model, fingerprint, task, and each adapter's directory,
method and whether it is on. Trainable backbone extras (a projection) go with the prompt,
or into `modules.safetensors` when there is no prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from softprompt.artifacts.bank import is_bank, read_bank_extras, read_bank_meta
from softprompt.artifacts.prompt_dir import (
    META_FILE,
    LoadedPrompt,
    PromptLoadError,
    _read_json_object,
    load_prompt,
    sha256_file,
    verify_manifest_files,
)

BUNDLE_FORMAT = "softprompt-bundle"
MODULES_FILE = "modules.safetensors"


@dataclass
class Adapter:
    """One adapter of a bundle: where it is, which method wrote it, whether it is on."""

    path: Path
    method: str
    enabled: bool = True


@dataclass
class Bundle:
    """A bundle read from disk (or a prompt directory seen as a one-adapter bundle).

    Attributes:
        directory: the bundle's root.
        meta: the manifest (or the prompt's softprompt.json; {} for a PEFT prompt).
        adapters: adapter name ("prompt", "lora", "full") -> `Adapter`.
        extras: trainable backbone state saved beside the adapters (projection, ...).
        prompt: the prompt adapter as read (read once; its loader takes it from here).
    """

    directory: Path
    meta: dict[str, Any]
    adapters: dict[str, Adapter]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    prompt: LoadedPrompt | None = None

    @property
    def base_model(self) -> str | None:
        """The recorded base model (a PEFT prompt names it in adapter_config.json)."""
        recorded = self.meta.get("base_model")
        return recorded or (self.prompt.base_model if self.prompt is not None else None)

    @property
    def task(self) -> dict[str, Any]:
        task = self.meta.get("task")
        return task if isinstance(task, dict) else {}


def write_bundle(
    directory: Path, tuners: list, context: dict[str, Any], extras: dict[str, torch.Tensor]
) -> None:
    """Save `tuners` (those with an adapter name) under `directory`.

    Args:
        tuners: the run's tuners; ones with an empty `adapter` are carried by `extras`.
        context: family, base_model, fingerprint, task, placement (for every adapter).
        extras: the backbone's `state_for_save()` (may be empty).
    """
    savable = [t for t in tuners if t.adapter]
    prompt = next((t for t in savable if t.adapter == "prompt"), None)
    if prompt is not None and len(savable) == 1:
        prompt.save(directory, {**context, "extra": extras})
        meta = _read_json_object(directory / META_FILE)
        meta["adapters"] = {"prompt": _entry(".", prompt)}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return
    directory.mkdir(parents=True, exist_ok=True)
    for tuner in savable:
        own = {**context, "extra": extras if tuner is prompt else None}
        tuner.save(directory / tuner.adapter, own)
    if extras and prompt is None:
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in extras.items()}
        save_file(tensors, str(directory / MODULES_FILE), metadata={"format": "pt"})
    files = {
        f.relative_to(directory).as_posix(): sha256_file(f)
        for f in sorted(directory.rglob("*"))
        if f.is_file() and f.name != META_FILE
    }
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": 1,
        "family": context["family"],
        "base_model": context["base_model"],
        "fingerprint": context["fingerprint"],
        "placement": context.get("placement", "prepend"),
        "task": context.get("task") or {},
        "adapters": {t.adapter: _entry(t.adapter, t) for t in savable},
        "files": files,
    }
    (directory / META_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def _entry(path: str, tuner) -> dict[str, Any]:
    method = getattr(tuner, "saved_method", tuner.name)  # a prompt bank saves as one
    return {"path": path, "method": method, "enabled": bool(tuner.enabled)}


def is_bundle(directory: Path) -> bool:
    """True for a multi-adapter bundle (a manifest at the root, adapters below it)."""
    meta = Path(directory) / META_FILE
    if not meta.is_file():
        return False
    try:
        return _read_json_object(meta).get("format") == BUNDLE_FORMAT
    except PromptLoadError:
        return False


def read_bundle(directory: str | Path) -> Bundle:
    """Read a bundle, a prompt directory of ours, or a prompt PEFT saved.

    Raises:
        PromptLoadError: missing, damaged or tampered-with files.
    """
    directory = Path(directory)
    if is_bank(directory):
        meta = read_bank_meta(directory)
        adapters = {"prompt": Adapter(directory, "prompt_bank")}
        return Bundle(directory, meta, adapters, read_bank_extras(directory))
    peft_prefix = _peft_prefix_base(directory)
    if peft_prefix is not None:  # a prefix PEFT saved: one adapter, no metadata of ours
        adapters = {"prefix": Adapter(directory, "prefix_tuning")}
        return Bundle(directory, {"base_model": peft_prefix}, adapters)
    if not is_bundle(directory):
        loaded = load_prompt(directory)
        adapters = {"prompt": Adapter(directory, "prompt_tuning")}
        return Bundle(directory, loaded.meta, adapters, loaded.extra, loaded)
    meta = _read_json_object(directory / META_FILE)
    _verify(directory, meta)
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
    extras: dict[str, torch.Tensor] = {}
    prompt_adapter = adapters.get("prompt")
    bank = prompt_adapter is not None and prompt_adapter.method == "prompt_bank"
    prompt = load_prompt(prompt_adapter.path) if prompt_adapter and not bank else None
    if bank:
        extras = read_bank_extras(prompt_adapter.path)
    elif prompt is not None:
        extras = prompt.extra
    elif (directory / MODULES_FILE).is_file():
        try:
            extras = load_file(str(directory / MODULES_FILE))
        except SafetensorError as err:
            raise PromptLoadError(f"{directory / MODULES_FILE}: unreadable ({err})") from None
    return Bundle(directory, meta, adapters, extras, prompt)


def _peft_prefix_base(directory: Path) -> str | None:
    """The base model a PEFT PREFIX_TUNING directory names, or None for anything else."""
    if (directory / META_FILE).is_file() or not (directory / "adapter_config.json").is_file():
        return None
    try:
        raw = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("peft_type") != "PREFIX_TUNING":
        return None
    return str(raw.get("base_model_name_or_path") or "") or None


def _verify(directory: Path, meta: dict[str, Any]) -> None:
    verify_manifest_files(directory, meta, "bundle")
