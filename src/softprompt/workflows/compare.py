"""`softprompt compare`: one config trained with several methods, as a table.

Each method runs as its own `softprompt train` process on the same data and budget (so
its peak memory is its own), under `OUTPUT_DIR/<method>/`. A method whose run already
finished (`all_results.json` present) is not rerun; an interrupted one resumes from its
last checkpoint. The table is written as Markdown and JSON. `OUTPUT_DIR` is locked while
compare runs, and each method's run locks its own folder (train/run_lock.py): a second
compare into it stops at once. Ctrl-C stops the method training at a step boundary with
a checkpoint saved, and compare with it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from softprompt.artifacts.manifest import write_bytes_atomically
from softprompt.config.run import ConfigError
from softprompt.errors import UserError
from softprompt.train.run_lock import RunLock
from softprompt.tuners.spec import section_specs, tuner_specs


def method_presets() -> dict[str, list[str]]:
    """`--methods` name -> its config overrides, from the methods' specs (in `rank` order).

    Every method switch is set, and every method's `compare_defaults`, so the config's own
    switches never leak into another row.

    Raises:
        ValueError: two methods bring presets of the same name, or a preset enables a
            method without a section.
    """
    specs = section_specs()
    presets = sorted((p for spec in tuner_specs() for p in spec.presets), key=lambda p: p.rank)
    out: dict[str, list[str]] = {}
    for preset in presets:
        unknown = set(preset.enable) - {spec.name for spec in specs}
        if preset.name in out or unknown:
            why = f"enables unknown {sorted(unknown)}" if unknown else "is brought by two methods"
            raise ValueError(f"compare preset {preset.name!r} {why}")
        values: dict[str, str] = {}
        for spec in specs:
            values[f"method.{spec.name}.enabled"] = str(spec.name in preset.enable).lower()
            values.update(o.split("=", 1) for o in spec.compare_defaults)
        values.update(o.split("=", 1) for o in preset.overrides)
        out[preset.name] = [f"{key}={value}" for key, value in values.items()]
    return out


# Method name -> config overrides.
METHODS: dict[str, list[str]] = method_presets()
# Rows that train nothing: the frozen model with its hard prompt (`softprompt baseline`),
# and a CLIP run's linear probe (`softprompt linear-probe`); their own commands score them.
BASELINES: dict[str, str] = {"zero-shot": "baseline", "linear-probe": "linear-probe"}


def canonical_method(name: str) -> str | None:
    """A `--methods` entry as its preset's name: case and spaces aside, and the parts of a
    combination in any order (`LoRA+prompt` is `prompt+lora`); None when unknown."""
    baseline = name.strip().lower().replace("_", "-")
    if baseline in BASELINES:
        return baseline
    wanted = sorted(part.strip() for part in name.strip().lower().split("+"))
    for known in METHODS:
        if sorted(known.lower().split("+")) == wanted:
            return known
    return None


def parse_methods(text: str) -> list[str]:
    """`prompt,lora,prompt+lora,full` -> the method names, checked.

    Raises:
        ConfigError: an unknown method, none at all, or one method named twice (it would
            train into the same folder and fill two rows of the table).
    """
    given = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in given if canonical_method(m) is None]
    if unknown or not given:
        raise ConfigError(
            f"--methods {text!r}: unknown {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join([*BASELINES, *METHODS])}"
        )
    methods: list[str] = []
    for name in given:
        method = canonical_method(name)
        if method in methods:
            raise ConfigError(
                f"--methods {text!r}: {method!r} is named more than once; give each method once"
            )
        methods.append(method)
    return methods


class MethodFailed(UserError):
    """A method's training process failed; its own error is in the output above."""


class TrainingInterrupted(KeyboardInterrupt):
    """A training process stopped on Ctrl-C or SIGTERM, after saving its checkpoint.

    Attributes:
        signum: the signal that stopped it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# How a `softprompt train` stopped by a signal exits: 128 + the signal's number through
# the CLI (it saved its step), minus the number when the signal killed it outright.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
INTERRUPTED_STATUSES = {
    **{128 + int(s): int(s) for s in _STOP_SIGNALS},
    **{-int(s): int(s) for s in _STOP_SIGNALS},
}


def run_training_process(command: list[str], **popen: Any) -> int:
    """Run a `softprompt train` command line to its end; its exit status.

    Ctrl-C in a terminal reaches the child too: it finishes its step and saves a
    checkpoint that the next run resumes from, so this waits for it (a second Ctrl-C
    stops both at once) before passing the KeyboardInterrupt on.

    Raises:
        TrainingInterrupted: the child stopped on a signal that reached it alone.
    """
    process = subprocess.Popen(command, **popen)
    try:
        status = process.wait()
    except KeyboardInterrupt:
        process.wait()
        raise
    if status in INTERRUPTED_STATUSES:
        raise TrainingInterrupted(INTERRUPTED_STATUSES[status])
    return status


def run_method(config: str, overrides: list[str], method: str, out: Path) -> dict[str, Any]:
    """Train one method in its own process (resuming an interrupted run); its results.

    Raises:
        MethodFailed: the training process failed.
        TrainingInterrupted: it was stopped by a signal.
    """
    results = out / "all_results.json"
    if method in BASELINES and not results.is_file():
        return run_baseline_row(config, overrides, method, out)
    if not results.is_file():
        command = [sys.executable, "-m", "softprompt", "train", config, *overrides]
        command += [*METHODS[method], f"training.output_dir={out}", "--resume", "auto"]
        command.append("--no-progress")
        status = run_training_process(command)
        if status != 0 or not results.is_file():
            raise MethodFailed(
                f"compare: method {method!r} failed (training into {out} exited with status "
                f"{status}; its error is above); fix it and rerun: finished methods are not "
                "trained again"
            )
    return json.loads(results.read_text(encoding="utf-8"))


def run_baseline_row(config: str, overrides: list[str], method: str, out: Path) -> dict[str, Any]:
    """Score a `BASELINES` row with its own command; its results in `train`'s shape.

    Raises:
        MethodFailed: the command failed.
    """
    command = [sys.executable, "-m", "softprompt", BASELINES[method], config, *overrides]
    if method == "zero-shot":
        command += ["--output-dir", str(out), "--no-progress"]
    else:
        command.append(f"training.output_dir={out}")
    status = run_training_process(command, stdout=subprocess.DEVNULL)
    produced = out / ("metrics.json" if method == "zero-shot" else "all_results.json")
    if status != 0 or not produced.is_file():
        raise MethodFailed(
            f"compare: {method!r} failed (softprompt {BASELINES[method]} into {out} exited "
            f"with status {status}; its error is above)"
        )
    results = json.loads(produced.read_text(encoding="utf-8"))
    if method == "zero-shot":
        results = zero_shot_results(results, _metric_for_best(config, overrides))
        write_bytes_atomically(out / "all_results.json", json.dumps(results, indent=2).encode())
    return results


def _metric_for_best(config: str, overrides: list[str]) -> str:
    from softprompt.config.run import load_config

    return load_config(config, overrides).training.metric_for_best_model


def zero_shot_results(metrics: dict[str, Any], metric: str) -> dict[str, Any]:
    """The baseline's metrics.json as a compare row's results: nothing trained, its
    validation value as the row's best metric."""
    val, test = metrics.get("val") or {}, metrics.get("test") or {}
    return {
        "methods": [],
        "trainable_parameters": 0,
        "total_parameters": 0,
        "train_samples_per_second": None,
        "peak_memory_mb": None,
        "metric_for_best_model": metric,
        "best_metric": val.get(metric.removeprefix("eval_")),
        "best_step": None,
        **{f"val_{k}": v for k, v in val.items()},
        **{f"test_{k}": v for k, v in test.items()},
    }


def table_row(method: str, results: dict[str, Any]) -> dict[str, Any]:
    trainable, total = results["trainable_parameters"], results["total_parameters"]
    return {
        "method": method,
        "trainable_parameters": trainable,
        "trainable_percent": 100.0 * trainable / max(total, 1),
        "train_samples_per_second": results["train_samples_per_second"],
        "peak_memory_mb": results.get("peak_memory_mb"),
        "metric": results["metric_for_best_model"],
        "best_metric": results["best_metric"],
        "best_step": results["best_step"],
        "test": {k: v for k, v in results.items() if k.startswith("test_") and _number(v)},
    }


# The test metric a row shows, the first one the run has.
HEADLINE_TEST_METRICS = ("accuracy", "vqa_accuracy", "rougeL", "exact_match", "cider", "loss")


def headline_test_metric(row: dict[str, Any]) -> tuple[str, float] | None:
    for name in HEADLINE_TEST_METRICS:
        value = row["test"].get(f"test_{name}")
        if value is not None:
            return name, value
    return None


def _shown(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def markdown(rows: list[dict[str, Any]]) -> str:
    """method | trainable params (count, %) | samples/s | peak memory | metric | best step."""
    metric = rows[0]["metric"] if rows else "metric"
    test = headline_test_metric(rows[0]) if rows else None
    test_name = f"test {test[0]}" if test else "test"
    lines = [
        f"| method | trainable params | % | train samples/s | peak RSS (MB) | best {metric} "
        f"| best step | {test_name} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        best, memory, shown = r["best_metric"], r["peak_memory_mb"], headline_test_metric(r)
        lines.append(
            f"| {r['method']} | {r['trainable_parameters']:,} | {r['trainable_percent']:.3f} | "
            f"{_shown(r['train_samples_per_second'], '.2f')} | "
            f"{'-' if memory is None else f'{memory:,.0f}'} | "
            f"{'-' if best is None else f'{best:.4f}'} | {r['best_step'] or '-'} | "
            f"{'-' if shown is None else f'{shown[1]:.4f}'} |"
        )
    return "\n".join(lines) + "\n"


def compare(
    config: str, overrides: list[str], methods: list[str], output_dir: Path
) -> list[dict[str, Any]]:
    """Train each method and write `compare.md` / `compare.json` in `output_dir`.

    `output_dir` is locked while the methods train (each run locks its own folder too):
    a second compare into it stops at once.

    Raises:
        RunDirInUse: another process holds `output_dir` or a method's folder.
        MethodFailed: a method's training failed.
        KeyboardInterrupt: Ctrl-C (the method training then saved a checkpoint).
    """
    with RunLock(output_dir, label="--output-dir"):
        rows = []
        for method in methods:
            folder = output_dir / method.replace("+", "_")
            rows.append(table_row(method, run_method(config, overrides, method, folder)))
        write_bytes_atomically(output_dir / "compare.json", json.dumps(rows, indent=2).encode())
        write_bytes_atomically(output_dir / "compare.md", markdown(rows).encode())
    return rows
