"""Files a training run writes: metrics.jsonl, all_results.json and adapter bundles.

Each is written so that a run killed at any moment leaves either the old or the new
file, never a torn one (metrics.jsonl: at most a partial last line, which the next
writer drops).
"""

from __future__ import annotations

import json
import os
import shutil
import weakref
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from softprompt.artifacts.manifest import (
    DiskFullError,
    room_for,
    tree_bytes,
    write_bytes_atomically,
)
from softprompt.backbones.base import Backbone
from softprompt.backbones.from_config import vision_settings
from softprompt.config.run import RunConfig
from softprompt.tasks.kinds import Task, task_record
from softprompt.train.checkpoint import RESUME_HINT
from softprompt.train.dashboards import open_dashboards
from softprompt.tuners.prompt_tuning.bank import PromptBank
from softprompt.tuners.prompt_tuning.tuner import PromptTuner

# The soft prompt before training (see `save_initial_prompt`).
INITIAL_PROMPT_FILE = "initial_prompt.safetensors"


class MetricsLog:
    """Appends one JSON object per event to run_dir/metrics.jsonl.

    A run killed while writing can leave a partial last line; it is cut off when the
    log is opened again (on resume), so every line of the file stays valid JSON. The
    dashboards `report_to` names (see train/dashboards.py) receive the same records.
    """

    def __init__(self, path: Path, enabled: bool, report_to: list[str] | None = None) -> None:
        self.path, self.enabled = path, enabled
        self.report_to = list(report_to or []) if enabled else []
        self.dashboards: list = []
        # Closes the dashboards when the log is dropped, also if nobody calls close().
        self._finalizer = weakref.finalize(self, _close_all, self.dashboards)
        if enabled:
            drop_partial_last_line(path)
            self.dashboards.extend(open_dashboards(self.report_to, path.parent))

    def forget_after(self, step: int) -> None:
        """Drop records of steps after `step`: a run resumed from that step's checkpoint
        logs them again, so each step keeps one record."""
        if step > 0 and self.dashboards:
            _close_all(self.dashboards)  # reopened so that they hide the later steps too
            self.dashboards[:] = open_dashboards(self.report_to, self.path.parent, step + 1)
        if not self.enabled or not self.path.is_file():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if _record_step(line) <= step]
        if len(kept) != len(lines):
            write_text_atomically(self.path, "".join(kept))

    def write(self, record: dict[str, Any]) -> None:
        """Append one record; a full disk leaves the log as it was and raises one line."""
        if self.enabled:
            line = (json.dumps(record) + "\n").encode("utf-8")
            size = self.path.stat().st_size if self.path.is_file() else 0
            try:
                with room_for(self.path.parent, self.path.name, len(line), then=RESUME_HINT):
                    with open(self.path, "ab") as handle:
                        handle.write(line)
            except DiskFullError:
                _truncate(self.path, size)  # no torn last line
                raise
            for dashboard in self.dashboards:
                dashboard.write(record)

    def close(self) -> None:
        """Close the dashboards' files (metrics.jsonl is closed after every write)."""
        self._finalizer()


def _close_all(dashboards: list) -> None:
    for dashboard in dashboards:
        dashboard.close()
    dashboards.clear()


# What a training run writes into its directory besides config.yaml and checkpoint-*/. A
# fresh start must not mix with an earlier run's: an old best/ would be kept as this run's
# result and metrics.jsonl appended to.
RUN_OUTPUTS = (
    "best",
    "metrics.jsonl",
    "all_results.json",
    "initial_prompt.safetensors",
    "tensorboard",
    "skipped_inputs.json",
    "predictions.val.jsonl",
    "predictions.test.jsonl",
    "report",
)


def earlier_run_outputs(run_dir: Path) -> list[Path]:
    """An earlier run's checkpoints and outputs in `run_dir` (empty when there are none)."""
    if not run_dir.is_dir():
        return []
    found = sorted(p for p in run_dir.glob("checkpoint-*") if p.is_dir())
    return found + [run_dir / name for name in RUN_OUTPUTS if (run_dir / name).exists()]


def clear_earlier_run(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _truncate(path: Path, size: int) -> None:
    """Cut a file back to `size` bytes (needs no free space)."""
    try:
        with open(path, "r+b") as handle:
            handle.truncate(size)
    except OSError:
        pass  # the next open drops a partial last line anyway


def drop_partial_last_line(path: Path) -> None:
    """Truncate a text file after its last newline (no-op when it ends with one)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def prompt_task_record(config: RunConfig, backbone: Backbone, task: Task | None) -> dict[str, Any]:
    """The task and (for images) the model layout a prompt directory records."""
    record = task_record(config)
    saved = task.to_record() if task is not None else None
    if saved is not None:
        record["vision_task"] = saved
        vision = asdict(vision_settings(config))
        vision.pop("cache_dir", None)
        record["vision"] = vision
        record["backbone"] = backbone.describe()
    return record


def save_context(config: RunConfig, backbone: Backbone, fp: dict, task_info: dict) -> dict:
    """What every adapter of a run records about its base model and task."""
    pt = config.method.prompt_tuning
    return {
        "family": backbone.family,
        "base_model": config.model.name_or_path,
        "fingerprint": fp,
        "task": task_info,
        "placement": pt.placement if task_info.get("vision") else "prepend",
    }


def save_initial_prompt(
    run_dir: Path, tuners, context: dict[str, Any], keep_existing: bool = False
) -> Path | None:
    """The soft prompt as initialised, before any step, as RUN_DIR/initial_prompt.safetensors.

    `softprompt inspect` measures how far each virtual token moved from it. Tensors are
    the vectors the backbone sees (through a reparameterisation's encoder): key
    `prompt_embeddings`, or `prompt_embeddings.<name>` per prompt of a bank. A resumed
    run keeps the file of its first start (`keep_existing`). Metadata names the base
    model and its embedding fingerprint, so a prompt is only compared with its own start.

    Returns:
        The file written or kept, or None when the run has no soft prompt.
    """
    tensors = initial_prompt_tensors(tuners.prompt)
    if not tensors:
        return None
    path = run_dir / INITIAL_PROMPT_FILE
    if keep_existing and path.is_file():
        return path
    metadata = {
        "format": "pt",
        "base_model": str(context.get("base_model")),
        "embedding_fingerprint": str(context.get("fingerprint", {}).get("embedding")),
    }
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    needed = sum(t.nbytes for t in tensors.values()) + 4096
    with room_for(run_dir, path.name, needed, cleanup=[tmp], then=RESUME_HINT):
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    return path


@torch.no_grad()
def initial_prompt_tensors(prompt: PromptTuner | PromptBank | None) -> dict[str, torch.Tensor]:
    """{key: (P, D) float32 CPU vectors} of a prompt tuner or a prompt bank ({} for none)."""
    if prompt is None:
        return {}
    return {
        key: vectors.detach().float().cpu().contiguous()
        for key, vectors in prompt.named_vectors().items()
    }


def replace_dir_atomically(target: Path, write, needed: int | None = None) -> None:
    """Write a directory beside `target` with `write(tmp)`, then swap it in.

    A failed write (a full disk: one `DiskFullError` line) leaves `target` as it was
    and no temporary behind.

    Args:
        needed: the bytes the new directory takes, for the message of a full disk
            (default: the size of the one it replaces, or of what was written).
    """
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)

    def size() -> int:
        return needed or max(tree_bytes(target), tree_bytes(tmp))

    with room_for(target.parent, f"{target.name}/", size, cleanup=[tmp], then=RESUME_HINT):
        write(tmp)
    old = target.parent / f".old-{target.name}-{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _record_step(line: str) -> int:
    """The step a metrics.jsonl line records; 0 (kept) for lines without one or that
    are not JSON objects, so a hand-edited log never stops a resume."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return 0
    step = record.get("step", 0) if isinstance(record, dict) else 0
    return step if isinstance(step, int) else 0


def write_text_atomically(path: Path, text: str) -> None:
    """Write next to `path`, then rename it over: readers never see half a file, and a
    full disk leaves the old file (and a one-line `DiskFullError`)."""
    write_bytes_atomically(path, text.encode("utf-8"), then=RESUME_HINT)


def write_json_atomically(path: Path, value: Any) -> None:
    write_text_atomically(path, json.dumps(value, indent=2))
