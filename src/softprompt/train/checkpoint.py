"""Checkpoints: trainable weights + everything needed to resume exactly, written atomically.

A checkpoint is first written to a hidden temporary directory and then renamed into
place, so a run killed at any moment leaves either a complete `checkpoint-STEP/` or
none. `trainer_state.json` is written last and carries checksums of the other files;
a directory without it, or whose files do not match, is never resumed from. Old
checkpoints are renamed to a hidden name before they are deleted, so a half-deleted
one never looks like a checkpoint either.

Only the main process writes. The data position is kept in examples of the epoch, over
all processes together, so a checkpoint resumes under any number of processes; each
process's random state is stored (`rng_state*`) so dropout replays exactly when the
number of processes stays the same.

Nothing here unpickles: weights and optimizer/scheduler state are safetensors files,
the rest is JSON.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from softprompt.artifacts.manifest import room_for, tree_bytes
from softprompt.artifacts.prompt_dir import WEIGHTS_FILE, sha256_file
from softprompt.errors import UserError
from softprompt.paths import UnsafeNameError, check_name, is_inside
from softprompt.train.state_files import StateFileError, load_state, save_state

STATE_FILE = "trainer_state.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
OPTIMIZER_FILE = "optimizer.safetensors"
SCHEDULER_FILE = "scheduler.safetensors"
# Process 0's random state; process i > 0 has `rng_state_{i}.*` beside it.
RNG_FILES = ("rng_state.safetensors", "rng_state.json")
# Every complete checkpoint lists at least these in its checksums, and trained weights:
# WEIGHTS_FILE at the root (a prompt) or below it (the adapters of a bundle).
REQUIRED_FILES = (OPTIMIZER_FILE, SCHEDULER_FILE, *RNG_FILES)
WEIGHT_NAMES = (WEIGHTS_FILE, "model.safetensors", "model.safetensors.index.json")
# Hidden directory names `PREFIX + NAME + "-" + PID`, never taken for checkpoints: being
# written, being deleted, or the previous NAME set aside while it is replaced (the
# loop replaces best/ that way).
_WRITING, _DELETING, _SET_ASIDE = ".tmp-", ".del-", ".old-"

# What to do once a failed checkpoint write has room again.
RESUME_HINT = "rerun with --resume auto to continue from the last complete checkpoint"
logger = logging.getLogger("softprompt")


class CheckpointError(UserError):
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
    if process_index == 0:
        return RNG_FILES
    return f"rng_state_{process_index}.safetensors", f"rng_state_{process_index}.json"


def _files(path: Path) -> list[Path]:
    """Every file under `path` (adapters of a bundle live in subdirectories)."""
    return sorted(f for f in path.rglob("*") if f.is_file())


def _fsync_files(path: Path) -> None:
    for file in _files(path):
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    # Makes a rename durable across a power cut, not only a killed process.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_hidden(path: Path) -> None:
    """Rename `path` to a hidden name, then delete it: never a half-deleted checkpoint."""
    hidden = path.parent / f"{_DELETING}{path.name}-{os.getpid()}"
    shutil.rmtree(hidden, ignore_errors=True)
    os.replace(path, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(run_dir: Path) -> None:
    """Tidy what processes killed mid-write left behind in a run directory.

    `.tmp-NAME-PID` (never finished) and `.del-NAME-PID` (half deleted) are deleted.
    `.old-NAME-PID` is the previous `NAME` (e.g. `best/`) set aside during a replacement:
    put back if the replacement never arrived, else deleted. Directories of live
    processes are left alone.
    """
    prefixes = (_WRITING, _DELETING, _SET_ASIDE)
    for child in sorted(run_dir.iterdir()):
        prefix = next((p for p in prefixes if child.name.startswith(p)), None)
        name, _, pid = child.name.removeprefix(prefix or "").rpartition("-")
        if prefix is None or not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        original = run_dir / name
        if prefix == _SET_ASIDE and name and not original.exists():
            os.replace(child, original)
        else:
            shutil.rmtree(child, ignore_errors=True)


def save_checkpoint(
    run_dir: Path,
    state: TrainState,
    write_adapters,
    optimizer: torch.optim.Optimizer,
    scheduler,
    rng_states: list[RngState] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write `run_dir/checkpoint-{step}` atomically.

    Args:
        write_adapters: callable(directory) writing the trained adapters (a bundle).
        rng_states: every process's `rng_state()`, in process order (default: this
            process's alone).
        optimizer_state: the state to save (default: `optimizer.state_dict()`); a sharded
            run passes its gathered, whole state.
    """
    remove_stale_temporaries(run_dir)
    final = run_dir / f"checkpoint-{state.global_step}"
    tmp = run_dir / f"{_WRITING}checkpoint-{state.global_step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    rng_states = rng_states or [rng_state()]

    def needed() -> int:  # measured at a failure, before the partial copy is removed
        return max(_checkpoint_bytes(run_dir, optimizer, rng_states), tree_bytes(tmp))

    # A full disk: the partial copy goes, the last complete checkpoint stays as it was.
    with room_for(run_dir, final.name, needed, cleanup=[tmp], then=RESUME_HINT):
        tmp.mkdir(parents=True)
        if optimizer_state is None:
            optimizer_state = optimizer.state_dict()
        _write_checkpoint_files(tmp, state, write_adapters, optimizer_state, scheduler, rng_states)
    if final.exists():
        # Re-saving a step (e.g. Ctrl-C right after a resume): the old copy goes hidden first.
        _remove_hidden(final)
    os.replace(tmp, final)
    _fsync_dir(run_dir)
    return final


def _write_checkpoint_files(
    tmp: Path, state: TrainState, write_adapters, optimizer_state, scheduler, rng_states
) -> None:
    """Every file of a checkpoint into `tmp`, trainer_state.json (the checksums) last."""
    write_adapters(tmp)
    save_state(optimizer_state, tmp / OPTIMIZER_FILE)
    save_state(scheduler.state_dict(), tmp / SCHEDULER_FILE)
    for index, (rng_tensors, rng_info) in enumerate(rng_states):
        tensor_file, info_file = _rng_files(index)
        save_file(rng_tensors, str(tmp / tensor_file))
        (tmp / info_file).write_text(json.dumps(rng_info), encoding="utf-8")
    checksums = {f.relative_to(tmp).as_posix(): sha256_file(f) for f in _files(tmp)}
    payload = {**asdict(state), "files": checksums}
    (tmp / STATE_FILE).write_text(json.dumps(payload, indent=2), encoding="utf-8")
    _fsync_files(tmp)


def _checkpoint_bytes(run_dir: Path, optimizer, rng_states: list[RngState]) -> int:
    """About the bytes a checkpoint takes: the newest one's size, else its tensors'
    (trained weights as float32, optimizer state, random states, JSON)."""
    steps = [(int(m.group(1)), c) for c in run_dir.iterdir() if (m := CHECKPOINT_RE.match(c.name))]
    if steps:
        return tree_bytes(max(steps)[1])
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = [t for entry in optimizer.state.values() for t in entry.values()]
    tensors = [t for t in state if isinstance(t, torch.Tensor)]
    tensors += [t for rng_tensors, _ in rng_states for t in rng_tensors.values()]
    json_bytes = 64_000 * len(rng_states)  # the random states as JSON, and the manifests
    return 4 * sum(p.numel() for p in params) + sum(t.nbytes for t in tensors) + json_bytes


def validate_checkpoint(path: Path) -> dict[str, Any]:
    """Return the trainer state of a complete checkpoint, or raise CheckpointError."""
    state_path = path / STATE_FILE
    if not path.is_dir():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not state_path.is_file():
        raise CheckpointError(f"{path} is incomplete (no {STATE_FILE}); it was interrupted")
    try:
        payload = json.loads(state_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise CheckpointError(f"{state_path}: damaged ({err})") from None
    files = payload.get("files") if isinstance(payload, dict) else None
    if not isinstance(files, dict):
        raise CheckpointError(f"{state_path}: damaged (no checksums of the checkpoint's files)")
    missing = [name for name in REQUIRED_FILES if name not in files]
    if not any(_holds_weights(str(name)) for name in files):
        missing.insert(0, WEIGHTS_FILE)
    if missing and "optimizer.pt" not in files:  # checkpoints from before safetensors state
        raise CheckpointError(f"{state_path}: damaged (no checksum for {', '.join(missing)})")
    for name, digest in files.items():
        try:
            # A plain relative path: one file name, or adapter/file name in a bundle.
            parts = check_name(name, "checkpoint file name")
            if not 1 <= len(parts) <= 2:
                raise UnsafeNameError(f"checkpoint file name {name!r} is not a plain file name")
        except UnsafeNameError as err:
            raise CheckpointError(f"{state_path}: damaged ({err})") from None
        file = path.joinpath(*parts)
        if not file.is_file() or sha256_file(file) != digest:
            raise CheckpointError(f"{file}: missing or does not match its checksum")
    return payload


def _holds_weights(name: str) -> bool:
    """Whether a checkpoint file holds trained weights: PEFT's and full fine-tuning's
    names, or any other adapter's safetensors (a class prompt, a linear probe)."""
    if name in REQUIRED_FILES or name.startswith("rng_state"):
        return False
    return name.rsplit("/", 1)[-1] in WEIGHT_NAMES or name.endswith(".safetensors")


def find_latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint in a run directory.

    Damaged or half-written ones are skipped, and so are `checkpoint-N` symlinks that
    lead outside the run directory.
    """
    if not run_dir.is_dir():
        return None
    steps = []
    for child in run_dir.iterdir():
        match = CHECKPOINT_RE.match(child.name)
        if match and is_inside(run_dir, child):
            steps.append((int(match.group(1)), child))
    for _, path in sorted(steps, reverse=True):
        try:
            validate_checkpoint(path)
            return path
        except CheckpointError as err:
            logger.warning("Skipping %s: %s", path.name, err)
    return None


def _load_state_file(path: Path, name: str) -> dict[str, Any]:
    try:
        if (path / name).is_file():
            return load_state(path / name)
        # Checkpoints written before state files were safetensors; never a full unpickle.
        legacy = path / name.replace(".safetensors", ".pt")
        return torch.load(legacy, map_location="cpu", weights_only=True)
    except (StateFileError, OSError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read {name} ({err})") from None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _train_state(path: Path, payload: dict[str, Any], batch_size: int) -> TrainState:
    """The TrainState a checkpoint's trainer_state.json holds, its counters checked."""
    known = {f.name for f in fields(TrainState)}
    values = {k: v for k, v in payload.items() if k in known}
    damaged = CheckpointError(f"{path / STATE_FILE}: damaged (step counters are not counts)")
    if "batch_in_epoch" in payload and "samples_in_epoch" not in payload:
        # Single-process checkpoints of earlier versions counted batches of `batch_size`.
        if not _is_count(payload["batch_in_epoch"]):
            raise damaged
        values["samples_in_epoch"] = payload["batch_in_epoch"] * batch_size
        values["examples_per_step"] = batch_size
    state = TrainState(**values)
    counters = (
        state.global_step,
        state.epoch,
        state.samples_in_epoch,
        state.examples_per_step,
        state.bad_evals,
    )
    if not all(_is_count(n) for n in counters):
        raise damaged
    return state


def load_checkpoint(
    path: Path,
    optimizer: torch.optim.Optimizer,
    scheduler,
    process_index: int = 0,
    batch_size: int = 1,
    payload: dict[str, Any] | None = None,
) -> TrainState:
    """Restore optimizer, scheduler and RNG; return the loop state (prompt loads apart).

    Args:
        process_index: whose random state to restore; a process the checkpoint has
            none for (it was written by fewer processes) takes process 0's.
        batch_size: `training.batch_size`, to read the data position of checkpoints
            written before it was counted in examples (they counted batches).
        payload: `validate_checkpoint(path)`, when the caller has just checked it.

    Raises:
        CheckpointError: the checkpoint is incomplete, damaged, or of another run.
    """
    payload = payload if payload is not None else validate_checkpoint(path)
    state = _train_state(path, payload, batch_size)
    optimizer_state = _load_state_file(path, OPTIMIZER_FILE)
    scheduler_state = _load_state_file(path, SCHEDULER_FILE)
    tensor_file, info_file = _rng_files(process_index)
    if not {tensor_file, info_file} <= payload["files"].keys():
        tensor_file, info_file = RNG_FILES  # a process the checkpoint's run did not have
    try:
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(scheduler_state)
        rng_info = json.loads((path / info_file).read_text(encoding="utf-8"))
        _restore_rng(load_file(str(path / tensor_file)), rng_info)
    except (ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as err:
        raise CheckpointError(
            f"{path}: does not fit this run ({type(err).__name__}: {err}); was it written "
            "with a different config?"
        ) from None
    return state


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
        _remove_hidden(path)
