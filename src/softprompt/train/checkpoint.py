"""Checkpoints: trainable weights + everything needed to resume exactly, written atomically.

A checkpoint is first written to a hidden temporary directory and then renamed into
place, so a run killed at any moment leaves either a complete `checkpoint-STEP/` or
none. `trainer_state.json` is written last and carries checksums of the other files;
a directory without it, or whose files do not match, is never resumed from.

Only the main process writes. The data position is kept in examples of the epoch, over
all processes together, so a checkpoint resumes under any number of processes; each
process's random state is stored (`rng_state*`) so dropout replays exactly when the
number of processes stays the same.
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
    # Examples of this epoch already trained on, all processes together.
    samples_in_epoch: int = 0
    # The examples per optimizer step (batch_size x processes x accumulation) the epoch's
    # order was built with; resuming with another value cannot replay that order exactly.
    examples_per_step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    evaluations: list[dict[str, Any]] = field(default_factory=list)


RngState = tuple[dict[str, torch.Tensor], dict[str, Any]]


def rng_state() -> RngState:
    """This process's torch/CUDA/Python/NumPy random state: (tensors, JSON-able info)."""
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


def _rng_files(process_index: int) -> tuple[str, str]:
    # Process 0 keeps the names single-process checkpoints always had.
    suffix = "" if process_index == 0 else f"_{process_index}"
    return f"rng_state{suffix}.safetensors", f"rng_state{suffix}.json"


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
    rng_states: list[RngState] | None = None,
) -> Path:
    """Write `run_dir/checkpoint-{step}` atomically.

    Args:
        write_prompt: callable(directory) writing the prompt files (PEFT format + meta).
        rng_states: every process's `rng_state()`, in process order (default: this
            process's alone).
    """
    final = run_dir / f"checkpoint-{state.global_step}"
    tmp = run_dir / f".tmp-checkpoint-{state.global_step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write_prompt(tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    for index, (rng_tensors, rng_info) in enumerate(rng_states or [rng_state()]):
        tensor_file, info_file = _rng_files(index)
        save_file(rng_tensors, str(tmp / tensor_file))
        (tmp / info_file).write_text(json.dumps(rng_info), encoding="utf-8")
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


def load_checkpoint(
    path: Path,
    optimizer: torch.optim.Optimizer,
    scheduler,
    process_index: int = 0,
    batch_size: int = 1,
) -> TrainState:
    """Restore optimizer, scheduler and RNG; return the loop state (prompt loads apart).

    Args:
        process_index: whose random state to restore; a process the checkpoint has
            none for (it was written by fewer processes) takes process 0's.
        batch_size: `training.batch_size`, to read the data position of checkpoints
            written before it was counted in examples (they counted batches).
    """
    payload = validate_checkpoint(path)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    tensor_file, info_file = _rng_files(process_index)
    if not (path / tensor_file).is_file():
        tensor_file, info_file = _rng_files(0)
    rng_info = json.loads((path / info_file).read_text(encoding="utf-8"))
    _restore_rng(load_file(str(path / tensor_file)), rng_info)
    payload.pop("files", None)
    if "batch_in_epoch" in payload:
        # Single-process checkpoints of earlier versions: batches of `batch_size`.
        payload["samples_in_epoch"] = payload.pop("batch_in_epoch") * batch_size
        payload["examples_per_step"] = batch_size
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
