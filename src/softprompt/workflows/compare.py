"""`softprompt compare`: one config trained with several methods, as a table.

Each method runs as its own `softprompt train` process on the same data and budget (so
its peak memory is its own), under `OUTPUT_DIR/<method>/`. A method whose run already
finished (`all_results.json` present) is not rerun; an interrupted one resumes from its
last checkpoint. The table is written as Markdown and JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from softprompt.config.run import ConfigError
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


def parse_methods(text: str) -> list[str]:
    """`prompt,lora,prompt+lora,full` -> the method names, checked."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(
            f"--methods {text!r}: unknown {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(METHODS)}"
        )
    return methods


def run_method(config: str, overrides: list[str], method: str, out: Path) -> dict[str, Any]:
    """Train one method in its own process (resuming an interrupted run); its results."""
    results = out / "all_results.json"
    if not results.is_file():
        command = [sys.executable, "-m", "softprompt", "train", config, *overrides]
        command += [*METHODS[method], f"training.output_dir={out}", "--resume", "auto"]
        command.append("--no-progress")
        done = subprocess.run(command, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{method}: training exited with {done.returncode}")
    return json.loads(results.read_text(encoding="utf-8"))


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
            f"{r['train_samples_per_second']:.2f} | "
            f"{'-' if memory is None else f'{memory:,.0f}'} | "
            f"{'-' if best is None else f'{best:.4f}'} | {r['best_step'] or '-'} | "
            f"{'-' if shown is None else f'{shown[1]:.4f}'} |"
        )
    return "\n".join(lines) + "\n"


def compare(
    config: str, overrides: list[str], methods: list[str], output_dir: Path
) -> list[dict[str, Any]]:
    """Train each method and write `compare.md` / `compare.json` in `output_dir`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for method in methods:
        folder = output_dir / method.replace("+", "_")
        rows.append(table_row(method, run_method(config, overrides, method, folder)))
    (output_dir / "compare.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    (output_dir / "compare.md").write_text(markdown(rows), encoding="utf-8")
    return rows
