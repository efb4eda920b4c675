"""`write_report`: read a run (and its baseline), draw the figures, write HTML + Markdown.

report/
    report.html          one self-contained page: figures and thumbnails inlined as
                         data URIs, plain inline CSS/JS, opens from disk offline
    report.md            the same numbers as a Markdown summary
    *.png                every figure of the page, as files
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from softprompt.artifacts.manifest import write_bytes_atomically
from softprompt.workflows.report.baseline import (
    BASELINE_DIRNAME,
    METRICS_FILE,
    REPORT_HINT,
    run_baseline,
)
from softprompt.workflows.report.data import (
    LOWER_IS_BETTER,
    SPLITS,
    Evaluated,
    Pair,
    RunFiles,
    is_number,
    pair_records,
    read_baseline,
    read_run,
    scalar_metrics,
)
from softprompt.workflows.report.examples import (
    MAX_EXAMPLES,
    MAX_PANELS,
    accuracy_by_group,
    answer_groups,
    panel_examples,
    select_examples,
)
from softprompt.workflows.report.inspection import inspect_run_prompt
from softprompt.workflows.report.model import Figure, Report, ReportPaths

logger = logging.getLogger("softprompt")

__all__ = ["MAX_EXAMPLES", "MAX_PANELS", "Report", "ReportPaths", "write_report"]


def write_report(
    run_dir: str | Path,
    baseline: str | None = None,
    output: str | Path | None = None,
    max_examples: int = MAX_EXAMPLES,
    progress: bool = False,
) -> ReportPaths:
    """Write report.html, report.md and the figures of a finished run.

    Args:
        run_dir: the run directory (it needs all_results.json).
        baseline: "zero-shot" (RUN_DIR/baseline, computed when missing), another run or
            baseline directory, or None: RUN_DIR/baseline when present, else no baseline.
        output: the HTML file; default RUN_DIR/report/report.html. Figures and report.md
            are written beside it.
        max_examples: example rows in the page (the cap; see `report.examples`).
        progress: progress bars when a baseline has to be computed.
    """
    run = read_run(run_dir)
    html_path = Path(output) if output else run.directory / "report" / "report.html"
    out = html_path.parent
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(run, _baseline(run, baseline, progress), out, max_examples)
    from softprompt.workflows.report.html import render
    from softprompt.workflows.report.summary import markdown

    _write_text(html_path, render(report))
    md_path = out / "report.md"
    _write_text(md_path, markdown(report, html_path))
    return ReportPaths(html_path, md_path, [f.path for f in report.figures])


def _baseline(run: RunFiles, choice: str | None, progress: bool) -> Evaluated | None:
    """The baseline `choice` names (see `write_report`)."""
    own = run.directory / BASELINE_DIRNAME
    if choice is None:
        return read_baseline(own) if (own / METRICS_FILE).is_file() else None
    if choice != "zero-shot":
        return read_baseline(choice)
    if not (own / METRICS_FILE).is_file():
        from softprompt.config.run import load_config

        config_path = run.directory / "config.yaml"
        logger.info("Zero-shot baseline of %s (saved in %s)", run.directory, own)
        config = load_config(config_path)
        splits = tuple(s for s in ("val", "test") if s in run.tuned.metrics) or ("val", "test")
        run_baseline(config, splits=splits, output_dir=own, progress=progress)
    return read_baseline(own)


def build_report(
    run: RunFiles, baseline: Evaluated | None, out: Path, max_examples: int = MAX_EXAMPLES
) -> Report:
    """Gather numbers, pairs and figures (the figures are written to `out`)."""
    task_type = str((run.config.get("task") or {}).get("type", "text2text"))
    split = next((s for s in SPLITS if s in run.tuned.predictions), None)
    pairs: list[Pair] = []
    if split is not None:
        other = baseline.predictions.get(split) if baseline else None
        pairs = pair_records(run.tuned.predictions[split], other)
    report = Report(
        run=run,
        baseline=baseline,
        task_type=task_type,
        split=split,
        metric_rows=metric_rows(run.tuned.metrics, baseline.metrics if baseline else {}),
        task_rows=task_rows(run.tuned.tasks, baseline.tasks if baseline else {}),
        pairs=pairs,
        shown=select_examples(pairs, max_examples),
        max_examples=max_examples,
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    if task_type == "vqa" and pairs:
        report.groups_what, groups = answer_groups(pairs)
        report.groups = accuracy_by_group(groups)
    report.figures = draw_figures(report, out)
    methods = run.results.get("methods") or []
    report.inspection, report.inspection_error = inspect_run_prompt(run.directory, methods)
    return report


def metric_rows(
    tuned: dict[str, dict[str, Any]], baseline: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Baseline, tuned and their difference per split and numeric metric."""
    rows = []
    for split in SPLITS:
        if split not in tuned:
            continue
        base = baseline.get(split, {})
        names = scalar_metrics({**base, **tuned[split]})
        rows += [_row(split, name, base.get(name), tuned[split].get(name)) for name in names]
    return rows


def task_rows(
    tuned: dict[str, dict[str, dict[str, Any]]], baseline: dict[str, dict[str, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Per-task rows of a bank run (empty for a single-task run)."""
    rows = []
    for split in SPLITS:
        for task, metrics in (tuned.get(split) or {}).items():
            base = (baseline.get(split) or {}).get(task, {})
            for name in scalar_metrics({**base, **metrics}):
                rows.append({"task": task, **_row(split, name, base.get(name), metrics.get(name))})
    return rows


def _row(split: str, name: str, base: Any, tuned: Any) -> dict[str, Any]:
    base = base if is_number(base) else None
    tuned = tuned if is_number(tuned) else None
    delta = tuned - base if base is not None and tuned is not None else None
    better = None
    if delta and name != "num_samples":
        better = delta < 0 if name in LOWER_IS_BETTER else delta > 0
    return {
        "split": split,
        "metric": name,
        "baseline": base,
        "tuned": tuned,
        "delta": delta,
        "better": better,
    }


def draw_figures(report: Report, out: Path) -> list[Figure]:
    """Every figure of the report, saved as PNG files in `out`."""
    from softprompt.workflows.report import plots

    run, split = report.run, report.split
    figures: list[Figure] = []

    def add(title: str, path: Path | None, caption: str = "", section: str = "analysis") -> None:
        if path is not None:
            figures.append(Figure(title, path, caption, section))

    path = plots.training_curves(run.log, out / "training_curves.png", run.results.get("best_step"))
    add("Training", path, "", "training")
    path = plots.eval_curves(run.log, out / "eval_curves.png")
    add("Validation metrics during training", path, "", "training")
    if split is None:
        return figures
    base_name = report.baseline.label if report.baseline else "baseline"
    tuned_records = run.tuned.predictions[split]
    base_records = report.baseline.predictions.get(split, []) if report.baseline else []
    if report.task_type == "classify":
        labels = _labels(run.tuned.metrics.get(split, {}), tuned_records)
        sides = {base_name: base_records, "tuned": tuned_records}
        matrices = {
            name: plots.confusion_from_records(records, labels)
            for name, records in sides.items()
            if records
        }
        add(
            f"Confusion matrices ({split})",
            plots.confusion_matrices(labels, matrices, out / f"confusion_{split}.png"),
            "rows: true class, columns: predicted class",
        )
        if len(labels) == 2:
            positive = (run.config.get("task") or {}).get("positive_label") or labels[0]
            sides = {name: records for name, records in sides.items() if records}
            add(f"ROC ({split})", plots.roc_curves(sides, positive, out / f"roc_{split}.png"))
    if report.groups:
        path = plots.group_bars(report.groups, report.groups_what, out / f"by_type_{split}.png")
        add(f"Accuracy by {report.groups_what} ({split})", path)
    panels = panel_examples(report.pairs)
    add(
        f"Comparisons ({split})",
        plots.comparison_grid(panels, run.directory, out / f"comparisons_{split}.png", base_name),
        "fixed answers first, then broken ones, then the rest",
        "examples",
    )
    return figures


def _labels(metrics: dict[str, Any], records: list[dict[str, Any]]) -> list[str]:
    """Class names in the metrics' order (else the probabilities' order of a record)."""
    if isinstance(metrics.get("labels"), list):
        return [str(x) for x in metrics["labels"]]
    for record in records:
        if isinstance(record.get("probabilities"), dict):
            return list(record["probabilities"])
    return sorted({str(r["label"]) for r in records if r.get("label") is not None})


def _write_text(path: Path, text: str) -> None:
    write_bytes_atomically(path, text.encode("utf-8"), then=REPORT_HINT)
