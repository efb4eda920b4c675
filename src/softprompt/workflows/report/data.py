"""What a report reads: a run's files, a baseline's files, and the pairs of answers.

A run directory holds `config.yaml`, `all_results.json` (`test_*` / `val_*` metrics of
best/), `metrics.jsonl` and `predictions.<split>.jsonl`. A baseline is either a
zero-shot directory (`metrics.json` with metrics per split, see `report.baseline`) or
another run directory. Missing optional files give empty values, never errors: a report
shows what there is.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from softprompt.data.errors import DataError
from softprompt.tasks.metrics import exact_match
from softprompt.workflows.report.baseline import METRICS_FILE, predictions_file

logger = logging.getLogger("softprompt")

SPLITS = ("test", "val")
# Metric names the tasks report; a bank's per-task key is `<task>_<one of these>`.
KNOWN_METRICS = (
    "loss",
    "perplexity",
    "num_samples",
    "exact_match",
    "vqa_accuracy",
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "roc_auc",
    "average_precision",
    "bleu",
    "rouge1",
    "rouge2",
    "rougeL",
    "rougeLsum",
    "cider",
    "confusion_matrix",
    "per_class",
    "labels",
)
LOWER_IS_BETTER = ("loss", "perplexity")


@dataclass
class Evaluated:
    """One side of a comparison (the tuned run, or its baseline).

    Attributes:
        label: how the page names it ("zero-shot", "tuned", a run's folder name).
        directory: where its files are.
        metrics: split -> metric name -> value (the run's JSON values, unchanged).
        predictions: split -> one record per example (empty when not saved).
        tasks: split -> task -> metric -> value, for a run over a bank of tasks.
    """

    label: str
    directory: Path
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    predictions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    tasks: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


@dataclass
class RunFiles:
    """A training run as its files describe it.

    Attributes:
        directory: the run directory.
        config: config.yaml as a dict ({} when missing).
        config_text: config.yaml's text.
        results: all_results.json.
        log: metrics.jsonl records, in order.
        tuned: the run's best adapters, evaluated.
    """

    directory: Path
    config: dict[str, Any]
    config_text: str
    results: dict[str, Any]
    log: list[dict[str, Any]]
    tuned: Evaluated


def read_json(path: Path) -> Any:
    """A JSON file; DataError naming the file when it is not valid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """JSON objects of a JSON-lines file, one per line; [] when the file is missing.

    A torn last line (left by a killed writer) and lines that hold no JSON object are
    skipped, with one warning for the file naming the first such line.

    Raises:
        DataError: a line before the last is not valid JSON.
    """
    if not path.is_file():
        return []
    records, skipped = [], []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number != len(lines):
                raise DataError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            skipped.append(number)
    _warn_skipped(path, skipped, "not a JSON object (a torn or hand-edited line)")
    return records


def read_metrics_log(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records, in order; [] when the file is missing.

    Only what a training run writes is kept: JSON objects with a string `event` and an
    integer `step`. Other lines (torn by a killed writer, hand-edited, another tool's)
    are skipped anywhere in the file, with one warning naming the file and first line:
    the log only draws the report's curves, so a bad line never stops a report.
    """
    if not path.is_file():
        return []
    records, skipped = [], []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            record = None
        if _is_metrics_record(record):
            records.append(record)
        else:
            skipped.append(number)
    _warn_skipped(path, skipped, "not a metrics record (JSON with an event and a step)")
    return records


def _is_metrics_record(record: Any) -> bool:
    if not isinstance(record, dict):
        return False
    step = record.get("step")
    whole = isinstance(step, int) and not isinstance(step, bool)
    return isinstance(record.get("event"), str) and whole


def _warn_skipped(path: Path, numbers: list[int], why: str) -> None:
    """One warning per file for the lines a reader skipped."""
    if not numbers:
        return
    more = f" and {len(numbers) - 1} more" if len(numbers) > 1 else ""
    logger.warning("%s:%d%s: skipped: %s", path, numbers[0], more, why)


def read_run(run_dir: str | Path, label: str = "tuned") -> RunFiles:
    """A run directory's files; it needs all_results.json (written when training ends)."""
    directory = Path(run_dir)
    results_path = directory / "all_results.json"
    if not results_path.is_file():
        raise FileNotFoundError(
            f"{results_path} not found: {directory} is not a finished training run "
            "(all_results.json is written when training ends)"
        )
    results = read_json(results_path)
    if not isinstance(results, dict):
        raise DataError(f"{results_path}: expected a JSON object")
    config_path = directory / "config.yaml"
    config_text = config_path.read_text(encoding="utf-8") if config_path.is_file() else ""
    config = yaml.safe_load(config_text) if config_text else {}
    tuned = Evaluated(label, directory)
    for split in SPLITS:
        metrics = split_metrics(results, split)
        if metrics:
            tuned.metrics[split], tuned.tasks[split] = split_tasks(metrics, results.get("tasks"))
        records = read_jsonl(predictions_file(directory, split))
        if records:
            tuned.predictions[split] = records
    log = read_metrics_log(directory / "metrics.jsonl")
    return RunFiles(directory, config or {}, config_text, results, log, tuned)


def split_metrics(results: dict[str, Any], split: str) -> dict[str, Any]:
    """`test_*` / `val_*` keys of all_results.json without their prefix.

    Runs written before `val_*` was recorded: the validation metrics of the best step.
    """
    prefix = f"{split}_"
    found = {k[len(prefix) :]: v for k, v in results.items() if k.startswith(prefix)}
    if found or split != "val":
        return found
    for record in results.get("evaluations") or []:
        if record.get("step") == results.get("best_step"):
            return {k[5:]: v for k, v in record.items() if k.startswith("eval_")}
    return {}


def split_tasks(
    metrics: dict[str, Any], tasks: list[str] | None = None
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Split `<task>_<metric>` keys (a bank of tasks) from the overall metrics.

    Args:
        metrics: one split's metrics, e.g. {"accuracy": 90.0, "ai_accuracy": 88.0}.
        tasks: the task names when the run records them; else a key is a task's when it
            ends in `_<known metric>` and is not itself a known metric.

    Returns:
        (overall metrics, task -> metric -> value).
    """
    overall: dict[str, Any] = {}
    per_task: dict[str, dict[str, Any]] = {}
    by_length = sorted(KNOWN_METRICS, key=len, reverse=True)
    for key, value in metrics.items():
        task = None
        if tasks:
            task = next((t for t in tasks if key.startswith(f"{t}_")), None)
            name = key[len(task) + 1 :] if task else key
        elif key not in KNOWN_METRICS:
            name = next((m for m in by_length if key.endswith(f"_{m}")), key)
            task = key[: -len(name) - 1] if name != key else None
        else:
            name = key
        if task:
            per_task.setdefault(task, {})[name] = value
        else:
            overall[key] = value
    return overall, per_task


def read_baseline(directory: str | Path) -> Evaluated:
    """A zero-shot baseline directory (metrics.json) or another run directory."""
    path = Path(directory)
    if (path / "all_results.json").is_file():
        other = read_run(path, label=path.name)
        return other.tuned
    metrics_path = path / METRICS_FILE
    if not metrics_path.is_file():
        raise FileNotFoundError(
            f"{metrics_path} not found: a baseline is a folder written by `softprompt "
            "baseline` (metrics.json) or a training run (all_results.json)"
        )
    document = read_json(metrics_path)
    label = "zero-shot" if document.get("zero_shot") else path.name
    baseline = Evaluated(label, path)
    for split in SPLITS:
        if isinstance(document.get(split), dict):
            overall, tasks = split_tasks(document[split], document.get("tasks"))
            baseline.metrics[split], baseline.tasks[split] = overall, tasks
        records = read_jsonl(predictions_file(path, split))
        if records:
            baseline.predictions[split] = records
    return baseline


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def scalar_metrics(metrics: dict[str, Any]) -> list[str]:
    """Names of the finite numeric metrics, known ones first in a stable order."""
    names = [k for k in metrics if is_number(metrics[k])]
    return sorted(names, key=lambda k: (KNOWN_METRICS.index(k) if k in KNOWN_METRICS else 99, k))


# ----------------------------------------------------------------------------- pairs


@dataclass
class Pair:
    """One example's answers from both sides.

    Attributes:
        index: position in the tuned predictions file.
        tuned: the tuned record.
        baseline: the baseline record with the same id (None when it has none).
        reference: the reference answer(s), joined for display.
        tuned_ok / baseline_ok: right answers (class = label, else exact match with a
            reference); None when unlabelled.
    """

    index: int
    tuned: dict[str, Any]
    baseline: dict[str, Any] | None
    reference: str
    tuned_ok: bool | None
    baseline_ok: bool | None

    @property
    def changed(self) -> bool:
        if self.baseline is None:
            return False
        return _norm(self.baseline.get("prediction")) != _norm(self.tuned.get("prediction"))

    @property
    def status(self) -> str:
        """ "fixed" (wrong -> right), "broken" (right -> wrong), "changed" or "same"."""
        if self.baseline_ok is False and self.tuned_ok:
            return "fixed"
        if self.baseline_ok and self.tuned_ok is False:
            return "broken"
        return "changed" if self.changed else "same"


def _norm(text: Any) -> str:
    return " ".join(str(text or "").lower().split())


def references_of(record: dict[str, Any]) -> list[str]:
    """The reference answers a prediction record carries (label, references, target)."""
    if record.get("label") is not None:
        return [str(record["label"])]
    refs = record.get("references") or ([record["target"]] if record.get("target") else [])
    return [str(r) for r in refs]


def is_right(record: dict[str, Any] | None) -> bool | None:
    """Whether a record's prediction is right (None: no reference, or no record)."""
    if record is None or "prediction" not in record:
        return None
    if record.get("label") is not None:
        return record["prediction"] == record["label"]
    refs = references_of(record)
    if not refs:
        return None
    return exact_match([str(record["prediction"])], [refs]) == 100.0


def pair_records(tuned: list[dict[str, Any]], baseline: list[dict[str, Any]] | None) -> list[Pair]:
    """Tuned and baseline records of the same examples, matched by id (and task).

    Ids are unique within one evaluation (within one task of a bank); files with
    repeated ids (hand-made ones) are matched by position instead.
    """
    baseline = baseline or []
    # A bank's records carry their task, and ids are unique within a task only.
    tagged = all("task" in r for r in [*tuned, *baseline])

    def key(record: dict[str, Any]) -> Any:
        return (record.get("task"), record.get("id")) if tagged else record.get("id")

    keys = [key(r) for r in baseline]
    by_id = dict(zip(keys, baseline, strict=True)) if len(set(keys)) == len(keys) else None
    pairs = []
    for i, record in enumerate(tuned):
        if by_id is not None:
            other = by_id.get(key(record))
        else:
            other = baseline[i] if i < len(baseline) else None
        refs = references_of(record)
        reference = " | ".join(dict.fromkeys(refs))  # VQAv2 repeats answers; show each once
        pairs.append(Pair(i, record, other, reference, is_right(record), is_right(other)))
    return pairs


def counts(pairs: list[Pair]) -> dict[str, int]:
    """How many examples are fixed, broken, changed (any difference) and compared."""
    out = {"fixed": 0, "broken": 0, "changed": 0, "same": 0}
    for pair in pairs:
        out[pair.status] += 1
    out["changed_any"] = sum(1 for p in pairs if p.changed)
    out["compared"] = sum(1 for p in pairs if p.baseline is not None)
    out["total"] = len(pairs)
    return out


def format_number(value: Any, signed: bool = False) -> str:
    """How the page and the summary show a number: 4 significant digits ("93.55",
    "0.1007"), integers whole, "—" for none."""
    if value is None:
        return "—"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:+d}" if signed else str(value)
    return f"{value:+.4g}" if signed else f"{value:.4g}"
