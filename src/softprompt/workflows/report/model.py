"""What a report holds: the numbers, pairs and figures the HTML page and the summary show."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softprompt.workflows.report.data import Evaluated, Pair, RunFiles, counts


@dataclass
class ReportPaths:
    html: Path
    markdown: Path
    images: list[Path]


@dataclass
class Figure:
    """A saved figure; `section`: where the page shows it (training, analysis, examples)."""

    title: str
    path: Path
    caption: str = ""
    section: str = "analysis"


@dataclass
class Report:
    """Everything the HTML page and the Markdown summary show (see `html`, `summary`).

    Attributes:
        run: the run's files.
        baseline: the baseline's metrics and predictions (None: no baseline).
        task_type: text2text, classify, caption or vqa.
        split: the split the per-example sections show (None: no predictions saved).
        metric_rows: {split, metric, baseline, tuned, delta, better} per metric.
        task_rows: the same per task of a bank, with a `task` key.
        pairs: every example of `split`; `shown` the rows the page shows.
        figures: the figures, in page order.
        groups: accuracy by answer type rows, and what the groups are.
        inspection: inspect_prompt's result, or `inspection_error` saying why not.
    """

    run: RunFiles
    baseline: Evaluated | None
    task_type: str
    split: str | None
    metric_rows: list[dict[str, Any]]
    task_rows: list[dict[str, Any]]
    pairs: list[Pair]
    shown: list[Pair]
    max_examples: int
    figures: list[Figure] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    groups_what: str = ""
    inspection: dict[str, Any] | None = None
    inspection_error: str | None = None
    generated: str = ""

    @property
    def counts(self) -> dict[str, int]:
        return counts(self.pairs)
