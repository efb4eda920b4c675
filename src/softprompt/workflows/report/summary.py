"""The report's Markdown summary (report.md): the page's numbers as plain tables."""

from __future__ import annotations

from pathlib import Path

from softprompt.workflows.report.data import format_number
from softprompt.workflows.report.html import method_rows, summary_rows, token_text
from softprompt.workflows.report.model import Report


def markdown(report: Report, html_path: Path) -> str:
    """report.md's text; `html_path` is the page it sits beside."""
    base = report.baseline.label if report.baseline else "baseline"
    lines = [f"# softprompt report: {report.run.directory.name}", ""]
    lines += [f"- {name}: {value}" for name, value in summary_rows(report)]
    lines += [f"- {name} parameters: {count}" for name, count in method_rows(report.run.results)]
    lines += ["", f"The full page: `{html_path.name}`.", "", "## Metrics", ""]
    if report.metric_rows:
        lines += _table(["split", "metric", base, "tuned", "Δ"], report.metric_rows, False)
    else:
        lines.append("The run recorded no val/test metrics.")
    if report.task_rows:
        lines += ["", "## Per task", ""]
        lines += _table(["split", "task", "metric", base, "tuned", "Δ"], report.task_rows, True)
    if report.groups:
        lines += ["", f"## Accuracy by {report.groups_what} ({report.split})", ""]
        lines += [f"| {report.groups_what} | examples | {base} | tuned |", "|---|---|---|---|"]
        for g in report.groups:
            lines.append(
                f"| {_cell(g['group'])} | {g['count']} | {format_number(g['baseline'])} "
                f"| {format_number(g['tuned'])} |"
            )
    if report.pairs:
        c = report.counts
        lines += [
            "",
            f"## Examples ({report.split})",
            "",
            f"{c['total']} examples; against {base}: {c['changed_any']} answers changed, "
            f"{c['fixed']} fixed, {c['broken']} broken. The page shows {len(report.shown)} "
            f"(at most {report.max_examples}); all are in predictions.{report.split}.jsonl.",
        ]
    if report.figures:
        lines += ["", "## Figures", ""]
        lines += [f"- {f.title}: `{f.path.name}`" for f in report.figures]
    lines += ["", "## Prompt inspection", ""]
    lines += _inspection(report)
    return "\n".join(lines) + "\n"


def _table(header: list[str], rows: list[dict], with_task: bool) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["split"], *([r["task"]] if with_task else []), r["metric"]]
        cells += [format_number(r["baseline"]), format_number(r["tuned"])]
        cells.append(format_number(r["delta"], signed=True))
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def _inspection(report: Report) -> list[str]:
    result = report.inspection
    if result is None:
        return [f"Unavailable: {report.inspection_error}"]
    lines = ["| token | norm | nearest tokens | drift |", "|---|---|---|---|"]
    for t in result["tokens"]:
        nearest = ", ".join(
            f"`{token_text(n)}` ({format_number(n.get('cosine'))})" for n in t.get("nearest") or []
        )
        lines.append(
            f"| {t.get('index')} | {format_number(t.get('norm'))} | {_cell(nearest)} "
            f"| {format_number(t.get('drift'))} |"
        )
    return lines


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")
