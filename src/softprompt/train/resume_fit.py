"""Does a checkpoint belong to this run? Checked before any of its state loads.

A resumed run must be the run that wrote the checkpoint: the same base model (family and
fingerprint), the same methods, prompts of the same shapes and the same task. Anything
else would load weights that mean something else (or fail deep inside a tensor copy), so
it stops with one line naming the checkpoint, the field and both values.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from softprompt.artifacts.bank import read_bank_meta
from softprompt.artifacts.prompt_dir import load_prompt
from softprompt.artifacts.saved import Bundle
from softprompt.errors import UserError
from softprompt.train.checkpoint import CheckpointError

# What to do with a checkpoint of another run.
FRESH_HINT = (
    "resume with the config it was written with, or start afresh in another "
    "training.output_dir (or with training.overwrite_output_dir=true)"
)
# The task fields a resumed run must share with its checkpoint (lengths and generation
# settings may change); a vision task's record is compared field by field as well.
TASK_KEYS = ("type", "template", "input_field")
VISION_TASK_KEYS = ("type", "template", "instruction", "classes", "label_words", "answers")

logger = logging.getLogger("softprompt")


def check_fits_run(path: Path, bundle: Bundle, tuners, context: dict[str, Any]) -> None:
    """Refuse a checkpoint of another run, as `predict` refuses a prompt of another model.

    What the checkpoint's adapters record (manifest and weights) is compared with this
    run: the base model's family and fingerprint, the methods, the prompts' shapes and
    the task. A checkpoint recording no fingerprint (written by an early version) is
    checked for the rest, with a warning that its base model cannot be.

    Args:
        bundle: `read_bundle(path)`; tuners: this run's, not loaded yet.
        context: what this run's adapters record (`run_files.save_context`).

    Raises:
        CheckpointError: naming the checkpoint, the field, both values and what to do.
    """
    _check_base_model(path, bundle.meta, context)
    found = {name: adapter.method for name, adapter in bundle.adapters.items()}
    wanted = {t.adapter: t.saved_method for t in tuners.tuners if t.adapter}
    if found != wanted:
        raise _mismatch(path, "the methods", _listed(found), _listed(wanted))
    prompt = tuners.prompt
    if prompt is not None and prompt.kind != "single":
        _check_bank(path, bundle.adapters["prompt"].path, prompt)
    elif prompt is not None and bundle.prompt is not None:
        shapes = _shape(bundle.prompt.weight), _shape(prompt.weight)
        _compare(path, "the prompt's shape (num_virtual_tokens x width)", *shapes)
    if prompt is None or prompt.kind != "tasks":  # a multi-task bank's tasks are its members'
        _check_task(path, "task", bundle.task, context.get("task") or {})


def _mismatch(path: Path, field: str, found: Any, expected: Any) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} is of another run: {field} is {found} there, {expected} in this "
        f"run; {FRESH_HINT}"
    )


def _compare(path: Path, field: str, found: Any, expected: Any) -> None:
    if found != expected:
        raise _mismatch(path, field, found, expected)


def _listed(methods: dict[str, str]) -> str:
    return ", ".join(f"{name} ({method})" for name, method in sorted(methods.items())) or "none"


def _shape(weight: torch.Tensor) -> str:
    return " x ".join(str(n) for n in weight.shape)


def _check_base_model(path: Path, meta: dict[str, Any], context: dict[str, Any]) -> None:
    if meta.get("family") is not None:
        _compare(path, "the model family", meta["family"], context["family"])
    recorded, ours = meta.get("fingerprint"), context["fingerprint"]
    if not isinstance(recorded, dict) or not recorded:
        logger.warning("%s records no base-model fingerprint: its base model is not checked", path)
        return
    for key in ("hidden_size", "embedding", "tokenizer"):
        if recorded.get(key) is not None and recorded[key] != ours.get(key):
            raise _mismatch(
                path,
                f"the base model's fingerprint.{key}",
                f"{recorded[key]} ({meta.get('base_model') or 'unknown base model'})",
                f"{ours.get(key)} ({context['base_model']})",
            )


def _check_bank(path: Path, directory: Path, bank) -> None:
    """A bank's kind, member names, each member's shape and (multi-task) task."""
    try:
        meta = read_bank_meta(directory)
    except UserError as err:
        raise CheckpointError(f"{path}: {err}") from None
    _compare(path, "the prompt bank's kind", meta.get("kind", "tasks"), bank.kind)
    _compare(path, "the bank's prompts", ", ".join(meta["members"]), ", ".join(bank.names))
    for name, entry in meta["members"].items():
        found = _shape(load_prompt(Path(directory) / name).weight)
        _compare(path, f"prompt {name!r}'s shape", found, _shape(bank.members[name].weight))
        if bank.kind == "tasks":
            _check_task(path, f"task {name!r}", entry.get("task") or {}, bank.records.get(name))


def _check_task(path: Path, what: str, found: dict[str, Any], expected: dict | None) -> None:
    """The fields of TASK_KEYS (and a vision task's VISION_TASK_KEYS) that both record."""
    expected = expected or {}
    pairs = [(f"{what} {k}", found, expected, k) for k in TASK_KEYS]
    vision, ours = found.get("vision_task"), expected.get("vision_task")
    if isinstance(vision, dict) and isinstance(ours, dict):
        pairs += [(f"{what} vision_task.{k}", vision, ours, k) for k in VISION_TASK_KEYS]
    for field_name, theirs, mine, key in pairs:
        if key in theirs and key in mine:  # an early checkpoint may lack some
            _compare(path, field_name, repr(theirs[key]), repr(mine[key]))
