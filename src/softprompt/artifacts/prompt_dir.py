"""Prompt directories: PEFT's on-disk format plus our metadata.

A prompt directory holds `adapter_config.json` and `adapter_model.safetensors` (key
`prompt_embeddings`) exactly as PEFT writes them, so `PeftModel.from_pretrained` loads
ours and we load PEFT's. `softprompt.json` beside them records what PEFT has no field
for: the backbone family, placement, the task the prompt was trained for, and a
fingerprint of the base model's embedding matrix and tokenizer (fingerprint.py), so a
prompt loaded onto the wrong base model fails loudly instead of producing garbage.

A reparameterised prompt (see reparam.py) is saved merged: `prompt_embeddings` is the
encoder's output, so everything above loads it as a plain prompt. Its unmerged state (raw
embeddings and encoder weights), which only resuming a run needs, goes beside it in
`prompt_encoder.safetensors`, checksummed in `softprompt.json` like the other files.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PromptTuningConfig as PeftPromptTuningConfig

from softprompt.artifacts.fingerprint import fingerprint
from softprompt.artifacts.manifest import (
    META_FILE,
    PromptLoadError,
    check_finite,
    load_tensors,
    read_json_object,
    save_tensors,
    sha256_file,
    write_manifest,
)
from softprompt.artifacts.saved import Adapter, Bundle

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
ENCODER_FILE = "prompt_encoder.safetensors"
PROMPT_FORMAT = "softprompt-prompt"
PEFT_TASK_TYPES = {"causal_lm": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}


@dataclass
class LoadedPrompt:
    """A prompt read from disk.

    Attributes:
        weight: (P, D) float32 prompt vectors (encoder prompt only for seq2seq).
        meta: our metadata, or {} for a prompt PEFT saved.
        peft_config: the adapter_config.json contents.
        extra: other tensors saved beside the prompt (trainable projections, ...).
        encoder_state: a reparameterised prompt's unmerged state (`SoftPrompt.state_dict()`:
            raw embeddings and encoder weights), or None for a plain prompt.
    """

    weight: torch.Tensor
    meta: dict[str, Any]
    peft_config: dict[str, Any]
    directory: Path
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    encoder_state: dict[str, torch.Tensor] | None = None

    @property
    def base_model(self) -> str | None:
        return self.meta.get("base_model") or self.peft_config.get("base_model_name_or_path")


class PromptDir:
    """The prompt directory format: ours, or PEFT's PROMPT_TUNING adapter (no manifest)."""

    @staticmethod
    def detect(directory: Path) -> bool:
        """True when `adapter_config.json` names a PROMPT_TUNING adapter."""
        path = Path(directory) / CONFIG_FILE
        if not path.is_file():
            return False
        try:
            return read_json_object(path).get("peft_type") == "PROMPT_TUNING"
        except (OSError, PromptLoadError):
            return False

    @staticmethod
    def read(directory: Path) -> Bundle:
        """The prompt as a one-adapter bundle (see `load_prompt`)."""
        loaded = load_prompt(directory)
        adapters = {"prompt": Adapter(loaded.directory, "prompt_tuning")}
        return Bundle(loaded.directory, loaded.meta, adapters, loaded.extra, loaded)

    @staticmethod
    def write(directory: str | Path, weight: torch.Tensor, **fields: Any) -> Path:
        """See `save_prompt`."""
        return save_prompt(directory, weight, **fields)


def save_prompt(
    directory: str | Path,
    weight: torch.Tensor,
    *,
    family: str,
    base_model: str,
    fingerprint_info: dict[str, Any],
    init_method: str = "RANDOM",
    init_text: str | None = None,
    placement: str = "prepend",
    task: dict[str, Any] | None = None,
    extra: dict[str, torch.Tensor] | None = None,
    encoder_state: dict[str, torch.Tensor] | None = None,
    reparameterize: str = "none",
) -> Path:
    """Write a prompt directory.

    Args:
        weight: (P, D) prompt vectors.
        family: backbone family of the base model.
        base_model: the `model.name_or_path` it was trained on.
        fingerprint_info: `fingerprint(...)` of that base model.
        task: what the prompt was trained for (type, template, lengths, labels ...), so
            `predict --prompt DIR` needs nothing else.
        extra: additional trainable tensors (prefixed names) stored in the same file.
        encoder_state: a reparameterised prompt's unmerged state, written to
            `ENCODER_FILE` (then `weight` is the encoder's merged output).
        reparameterize: the encoder kind (recorded in the metadata).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(directory / WEIGHTS_FILE, {"prompt_embeddings": weight, **(extra or {})})
    peft_config = _peft_config(weight, family, base_model, init_method, init_text)
    peft_config.save_pretrained(str(directory))
    files = [WEIGHTS_FILE, CONFIG_FILE]
    if encoder_state:
        save_tensors(directory / ENCODER_FILE, encoder_state)
        files.append(ENCODER_FILE)
    else:
        # A directory saved into again must not keep a stale encoder beside a new prompt.
        (directory / ENCODER_FILE).unlink(missing_ok=True)
    fields = {
        "family": family,
        "placement": placement,
        "num_virtual_tokens": int(weight.shape[0]),
        "token_dim": int(weight.shape[1]),
        "base_model": base_model,
        "fingerprint": fingerprint_info,
        "task": task or {},
    }
    tail = {"reparameterize": reparameterize} if encoder_state else None
    write_manifest(directory, PROMPT_FORMAT, fields, files, tail)
    return directory


def _peft_config(
    weight: torch.Tensor, family: str, base_model: str, init_method: str, init_text: str | None
) -> PeftPromptTuningConfig:
    """The adapter_config.json PEFT would write for this prompt."""
    text = init_method == "TEXT"
    return PeftPromptTuningConfig(
        task_type=PEFT_TASK_TYPES.get(family, "CAUSAL_LM"),
        num_virtual_tokens=int(weight.shape[0]),
        token_dim=int(weight.shape[1]),
        # One prompt, on the encoder side for seq2seq (PEFT would default to 2 there).
        num_transformer_submodules=1,
        prompt_tuning_init="TEXT" if text else "RANDOM",
        prompt_tuning_init_text=init_text if text else None,
        tokenizer_name_or_path=base_model if text else None,
        base_model_name_or_path=base_model,
    )


def load_prompt(directory: str | Path) -> LoadedPrompt:
    """Read a prompt directory written by softprompt or by PEFT.

    Every file whose checksum `softprompt.json` records is verified first, so a prompt
    whose weights or config were modified after saving is refused.

    Raises:
        PromptLoadError: the directory is missing, damaged, tampered with, or not a prompt.
    """
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise PromptLoadError(f"prompt directory not found: {directory}")
    if not config_path.is_file():
        raise PromptLoadError(f"{directory} is not a prompt directory (no {CONFIG_FILE})")
    meta: dict[str, Any] = {}
    if (directory / META_FILE).is_file():
        meta = read_json_object(directory / META_FILE)
        _verify_checksums(directory, meta)
    peft_config = read_json_object(config_path)
    peft_type = peft_config.get("peft_type")
    if peft_type != "PROMPT_TUNING":
        raise PromptLoadError(
            f"{directory} holds a {peft_type} adapter; a soft prompt needs PROMPT_TUNING"
        )
    tensors = read_adapter_weights(directory)
    full = tensors.pop("prompt_embeddings", None)
    if full is None:
        raise PromptLoadError(f"{directory}: no 'prompt_embeddings' tensor in the weights")
    if full.ndim != 2 or not full.is_floating_point():
        raise PromptLoadError(
            f"{directory}: 'prompt_embeddings' must be a 2-D float tensor, got "
            f"{tuple(full.shape)} {full.dtype}"
        )
    declared = _check_prompt_shape(directory, full, peft_config, meta)
    # PEFT stores encoder and decoder prompts stacked for seq2seq; the encoder one is first.
    weight = full[:declared].float().clone()
    encoder_state = _read_encoder_state(directory, meta)
    return LoadedPrompt(weight, meta, peft_config, directory, tensors, encoder_state)


def _check_prompt_shape(
    directory: Path, full: torch.Tensor, peft_config: dict[str, Any], meta: dict[str, Any]
) -> int:
    """The prompt's length, after checking the tensor's shape against `adapter_config.json`
    and `softprompt.json`: checksums only say the files are as saved, not that they agree.

    Raises:
        PromptLoadError: naming the file, the field and both values.
    """
    rows, width = (int(n) for n in full.shape)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    declared = peft_config.get("num_virtual_tokens")
    declared = rows if declared is None else declared
    if not _is_positive_int(declared):
        raise PromptLoadError(f"{config_path}: num_virtual_tokens {declared!r} is not a count")
    stacks = peft_config.get("num_transformer_submodules")
    # PEFT writes null before it knows the model: 1 (decoder-only) or 2 (seq2seq) prompts.
    allowed = (stacks,) if _is_positive_int(stacks) else (1, 2)
    restore = "the files disagree: restore the prompt from a checkpoint or retrain it"
    if rows not in {declared * n for n in allowed}:
        stacked = f" x num_transformer_submodules {stacks}" if allowed == (stacks,) != (1,) else ""
        raise PromptLoadError(
            f"{weights_path}: 'prompt_embeddings' holds {rows} vectors but {config_path} says "
            f"num_virtual_tokens {declared}{stacked}; {restore}"
        )
    meta_path = directory / META_FILE
    fingerprint_info = meta.get("fingerprint")
    fingerprint_info = fingerprint_info if isinstance(fingerprint_info, dict) else {}
    recorded = [
        (config_path, "token_dim", peft_config.get("token_dim"), width),
        (meta_path, "num_virtual_tokens", meta.get("num_virtual_tokens"), declared),
        (meta_path, "token_dim", meta.get("token_dim"), width),
        (meta_path, "fingerprint.hidden_size", fingerprint_info.get("hidden_size"), width),
    ]
    for path, key, value, actual in recorded:
        if value is not None and value != actual:
            raise PromptLoadError(
                f"{path}: {key} is {value!r} but {weights_path.name}'s 'prompt_embeddings' is "
                f"{rows} x {width}; {restore}"
            )
    return declared


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _read_encoder_state(directory: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The unmerged state of a reparameterised prompt, when its metadata lists one.

    Only a file `softprompt.json` checksums is read (it was verified above); one that
    appeared in the folder later is not ours and is left alone.
    """
    files = meta.get("files")
    if not isinstance(files, dict) or ENCODER_FILE not in files:
        return None
    return load_tensors(directory / ENCODER_FILE)


def _verify_checksums(directory: Path, meta: dict[str, Any]) -> None:
    """Check the files a prompt's manifest lists: plain names beside it (a bank's or
    bundle's nested names go through `verify_manifest_files`)."""
    files = meta.get("files", {})
    if not isinstance(files, dict):
        raise PromptLoadError(f"{directory / META_FILE}: 'files' must map names to checksums")
    for name, expected in files.items():
        # A plain file name: a damaged or hostile entry must not send us outside the folder.
        if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", ".."):
            raise PromptLoadError(f"{directory / META_FILE}: bad file name {name!r}")
        path = directory / name
        if not path.is_file():
            raise PromptLoadError(f"{path}: missing (listed in {META_FILE})")
        if sha256_file(path) != expected:
            raise PromptLoadError(
                f"{path}: checksum does not match {META_FILE}; the file was "
                "modified or damaged after it was saved"
            )


def read_adapter_weights(directory: Path) -> dict[str, torch.Tensor]:
    """`adapter_model.safetensors`, or an older PEFT `adapter_model.bin` (tensors only).

    Raises:
        PromptLoadError: neither file, or one that is unreadable or holds anything else.
    """
    safetensors_path = directory / WEIGHTS_FILE
    if safetensors_path.is_file():
        return load_tensors(safetensors_path)
    bin_path = directory / "adapter_model.bin"
    if bin_path.is_file():
        # Older PEFT prompts; weights_only refuses anything but tensors (no code runs).
        try:
            tensors = torch.load(bin_path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
            raise PromptLoadError(f"{bin_path}: unreadable or not plain tensors ({err})") from None
        if not isinstance(tensors, dict) or not all(
            isinstance(v, torch.Tensor) for v in tensors.values()
        ):
            raise PromptLoadError(f"{bin_path}: expected a dict of tensors")
        check_finite(bin_path, tensors)
        return tensors
    raise PromptLoadError(f"{directory}: no {WEIGHTS_FILE} (or adapter_model.bin)")


def check_compatible(loaded: LoadedPrompt, backbone) -> None:
    """Fail with a message naming both models when a prompt does not fit the backbone."""
    check_width(loaded.meta, loaded.directory, backbone, int(loaded.weight.shape[1]))
    check_base_model(loaded.meta, loaded.directory, backbone)


def check_width(meta: dict[str, Any], directory: Path, backbone, width: int | None = None) -> None:
    """Refuse an adapter trained on a model of another hidden size, naming both sizes.

    Args:
        width: the prompt's vectors' width (`load_prompt` checked it equals the hidden
            size `softprompt.json` records); None: the recorded size alone.
    """
    recorded = meta.get("fingerprint")
    trained = recorded.get("hidden_size") if isinstance(recorded, dict) else None
    trained = trained if isinstance(trained, int) else width
    if trained is None or trained == backbone.hidden_size:
        return
    trained_on = meta.get("base_model") or "an unknown base model"
    raise PromptLoadError(
        f"prompt {directory} was trained on {trained_on} (hidden size {trained}); "
        f"{backbone.name_or_path} has hidden size {backbone.hidden_size}: pass --model with "
        "the base model it was trained on"
    )


def check_base_model(meta: dict[str, Any], directory: Path, backbone) -> None:
    """Refuse a saved adapter whose recorded family, hidden size or base-model fingerprint
    differs from the backbone's."""
    trained_on = meta.get("base_model") or "an unknown base model"
    family = meta.get("family")
    if family is not None and family != backbone.family:
        raise PromptLoadError(
            f"prompt {directory} was trained on a {family} model ({trained_on}); "
            f"{backbone.name_or_path} is a {backbone.family} model"
        )
    check_width(meta, directory, backbone)
    expected = meta.get("fingerprint")
    if expected:
        actual = fingerprint(backbone.word_embeddings(), backbone.tokenizer)
        for key in ("embedding", "tokenizer"):
            if expected.get(key) != actual[key]:
                raise PromptLoadError(
                    f"prompt {directory} was trained on {trained_on}, but "
                    f"{backbone.name_or_path} has a different {key} "
                    f"({expected.get(key)} vs {actual[key]}); pass --model with the base "
                    "model it was trained on"
                )
