"""The zero-shot baseline of a run: the frozen model with the hard prompt only.

It is scored exactly as the tuned adapters are (`softprompt.inference.eval_run.run_evaluation`: the
same template, decoding, option scoring and metrics, on the same splits), and saved
beside the run so a report can set its answers row by row beside the tuned ones:

    <training.output_dir>/baseline/
        metrics.json                 {"zero_shot": true, "model": ..., "val": {...}, "test": {...}}
        predictions.<split>.jsonl    one record per example, as `eval --predictions` writes
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from softprompt.artifacts.manifest import write_bytes_atomically
from softprompt.config.run import RunConfig

BASELINE_DIRNAME = "baseline"
METRICS_FILE = "metrics.json"
PREDICTIONS_STEM = "predictions"
# What to do once a report write (a figure, the page) that found no room has some.
REPORT_HINT = "rerun softprompt report (or write it elsewhere with --output)"


def baseline_dir(config: RunConfig) -> Path:
    """Where a run's zero-shot baseline is saved: `<training.output_dir>/baseline`."""
    return Path(config.training.output_dir) / BASELINE_DIRNAME


def predictions_file(directory: str | Path, split: str) -> Path:
    """`<directory>/predictions.<split>.jsonl` (the name runs and baselines both use)."""
    return Path(directory) / f"{PREDICTIONS_STEM}.{split}.jsonl"


def run_baseline(
    config: RunConfig,
    splits: tuple[str, ...] = ("val", "test"),
    output_dir: str | Path | None = None,
    model: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate the bare model on `splits` and save metrics.json + predictions files.

    Args:
        config: the run's configuration (its data, template, task and decoding).
        splits: splits to score; those without data are left out.
        output_dir: default `baseline_dir(config)`.
        model: base model overriding `model.name_or_path`.
        progress: show a progress bar.

    Returns:
        What metrics.json holds: metrics per scored split plus `model`, `zero_shot`,
        `task_type`, `template`, `instruction`, `created` and `runtime_seconds`.
    """
    from softprompt.inference.eval_run import run_evaluation

    out = Path(output_dir) if output_dir is not None else baseline_dir(config)
    started = time.perf_counter()
    results = run_evaluation(
        config,
        prompt_dir=None,
        model=model,
        splits=splits,
        predict=True,
        progress=progress,
        predictions_path=str(out / PREDICTIONS_STEM),
    )
    results.update(
        zero_shot=True,
        task_type=config.task.type,
        # The hard prompt the frozen model was given (None: the task's default).
        template=config.data.template,
        instruction=config.task.instruction,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        runtime_seconds=time.perf_counter() - started,
    )
    if not any(split in results for split in splits):
        return results  # nothing scored: no metrics.json that a report would take as one
    out.mkdir(parents=True, exist_ok=True)
    # A half-written metrics.json never replaces a good one; a full disk says so in one line.
    data = json.dumps(results, indent=2).encode("utf-8")
    write_bytes_atomically(out / METRICS_FILE, data, then="rerun it")
    return results
