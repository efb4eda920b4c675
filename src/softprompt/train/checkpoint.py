"""Checkpoints: trainable weights + everything needed to resume exactly, written atomically.

A checkpoint is first written to a hidden temporary directory and then renamed into
place, so a run killed at any moment leaves either a complete `checkpoint-STEP/` or
none. `trainer_state.json` is written last and carries checksums of the other files;
a directory without it, or whose files do not match, is never resumed from.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from softprompt.tuners.prompt_tuning.io import sha256_file

STATE_FILE = "trainer_state.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or damaged."""


@dataclass
class TrainState:
    """Loop position and bookkeeping saved with every checkpoint."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    evaluations: list[dict[str, Any]] = field(default_factory=list)


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{i}"] = state
    np_state = np.random.get_state()
    info = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, info


def _restore_rng(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda_")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = info["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = info["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def _fsync_dir(path: Path) -> None:
    for file in path.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


def save_checkpoint(
    run_dir: Path,
    state: TrainState,
    write_prompt,
    optimizer: torch.optim.Optimizer,
    scheduler,
) -> Path:
    """Write `run_dir/checkpoint-{step}` atomically.

    Args:
        write_prompt: callable(directory) writing the prompt files (PEFT format + meta).
    """
    final = run_dir / f"checkpoint-{state.global_step}"
    tmp = run_dir / f".tmp-checkpoint-{state.global_step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write_prompt(tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    rng_tensors, rng_info = _rng_state()
    save_file(rng_tensors, str(tmp / "rng_state.safetensors"))
    (tmp / "rng_state.json").write_text(json.dumps(rng_info), encoding="utf-8")
    checksums = {f.name: sha256_file(f) for f in sorted(tmp.iterdir())}
    payload = {**asdict(state), "files": checksums}
    (tmp / STATE_FILE).write_text(json.dumps(payload, indent=2), encoding="utf-8")
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def validate_checkpoint(path: Path) -> dict[str, Any]:
    """Return the trainer state of a complete checkpoint, or raise CheckpointError."""
    state_path = path / STATE_FILE
    if not path.is_dir():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not state_path.is_file():
        raise CheckpointError(f"{path} is incomplete (no {STATE_FILE}); it was interrupted")
    try:
        payload = json.loads(state_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{state_path}: damaged ({err})") from None
    for name, digest in payload.get("files", {}).items():
        file = path / name
        if not file.is_file() or sha256_file(file) != digest:
            raise CheckpointError(f"{file}: missing or does not match its checksum")
    return payload


def find_latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint in a run directory (damaged ones are skipped)."""
    if not run_dir.is_dir():
        return None
    steps = []
    for child in run_dir.iterdir():
        match = CHECKPOINT_RE.match(child.name)
        if match:
            steps.append((int(match.group(1)), child))
    for _, path in sorted(steps, reverse=True):
        try:
            validate_checkpoint(path)
            return path
        except CheckpointError:
            continue
    return None


def load_checkpoint(path: Path, optimizer: torch.optim.Optimizer, scheduler) -> TrainState:
    """Restore optimizer, scheduler and RNG; return the loop state (prompt loads apart)."""
    payload = validate_checkpoint(path)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_info = json.loads((path / "rng_state.json").read_text(encoding="utf-8"))
    _restore_rng(load_file(str(path / "rng_state.safetensors")), rng_info)
    payload.pop("files", None)
    return TrainState(**payload)


def prune_checkpoints(run_dir: Path, keep: int | None) -> None:
    """Delete all but the newest `keep` checkpoint-STEP directories."""
    if keep is None:
        return
    found = sorted(
        (int(m.group(1)), child)
        for child in run_dir.iterdir()
        if (m := CHECKPOINT_RE.match(child.name))
    )
    for _, path in found[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
