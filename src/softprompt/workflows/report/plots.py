"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no display,
no pyplot state) and saved as PNG files beside the report."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from softprompt.artifacts.manifest import write_bytes_atomically
from softprompt.workflows.report.baseline import REPORT_HINT
from softprompt.workflows.report.data import Pair, is_number
from softprompt.workflows.report.examples import resolve_image

DPI = 100
RIGHT, WRONG, NEUTRAL = "#1a7f37", "#cf222e", "#57606a"
COLOURS = {"baseline": "#8c959f", "tuned": "#0969da"}


def _save(figure: Figure, path: Path, **options: Any) -> Path:
    """The figure as a PNG file: drawn in memory, then written in one piece (a full disk
    leaves no torn image and one `DiskFullError` line)."""
    if not options:
        figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=DPI, format="png", **options)
    write_bytes_atomically(path, buffer.getvalue(), then=REPORT_HINT)
    return path


def training_curves(
    log: list[dict[str, Any]], path: Path, best_step: int | None = None
) -> Path | None:
    """Training loss (with validation loss) and learning rate against the step.

    The test loss (of best/) is drawn at `best_step`, the step best/ comes from.
    """
    train = [r for r in log if r.get("event") == "train" and is_number(r.get("loss"))]
    evals = [r for r in log if r.get("event") == "eval" and is_number(r.get("eval_loss"))]
    if not train and not evals:
        return None
    figure = Figure(figsize=(9, 3.4))
    loss_ax, lr_ax = figure.subplots(1, 2)
    if train:
        steps, losses = [r["step"] for r in train], [r["loss"] for r in train]
        loss_ax.plot(steps, losses, ".-" if len(train) < 30 else "-", label="train loss")
    if evals:
        loss_ax.plot(
            [r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="val loss"
        )
    tests = [r for r in log if r.get("event") == "test" and is_number(r.get("test_loss"))]
    for record in tests[-1:]:
        step = best_step if isinstance(best_step, int) else record["step"]
        loss_ax.plot([step], [record["test_loss"]], "s", label="test loss (best/)")
    loss_ax.set(xlabel="step", ylabel="loss (per label token)", title="Loss")
    loss_ax.grid(alpha=0.3)
    loss_ax.legend()
    rates = [r for r in train if is_number(r.get("learning_rate"))]
    style = ".-" if len(rates) < 30 else "-"
    lr_ax.plot(
        [r["step"] for r in rates], [r["learning_rate"] for r in rates], style, color="#8250df"
    )
    lr_ax.set(xlabel="step", ylabel="learning rate", title="Learning rate")
    lr_ax.grid(alpha=0.3)
    return _save(figure, path)


def eval_curves(log: list[dict[str, Any]], path: Path, limit: int = 4) -> Path | None:
    """Validation metrics other than the loss against the step (one panel each)."""
    evals = [r for r in log if r.get("event") == "eval"]
    skip = {"eval_loss", "eval_perplexity", "eval_num_samples"}
    names = [k for k in (evals[-1] if evals else {}) if k.startswith("eval_") and k not in skip]
    names = [n for n in names if any(is_number(r.get(n)) for r in evals)][:limit]
    if not names:
        return None
    figure = Figure(figsize=(3.2 * len(names), 3.0))
    axes = np.atleast_1d(figure.subplots(1, len(names)))
    for ax, name in zip(axes, names, strict=True):
        points = [(r["step"], r[name]) for r in evals if is_number(r.get(name))]
        ax.plot(*zip(*points, strict=True), "o-", color=COLOURS["tuned"])
        ax.set(xlabel="step", title=name.removeprefix("eval_"))
        ax.grid(alpha=0.3)
    return _save(figure, path)


def confusion_matrices(
    labels: list[str], matrices: dict[str, list[list[int]]], path: Path
) -> Path | None:
    """One confusion matrix per side (rows: true class, columns: predicted)."""
    if not labels or not matrices:
        return None
    size = 1.2 + 0.5 * len(labels)
    figure = Figure(figsize=(size * len(matrices) + 0.6, size + 0.4))
    axes = np.atleast_1d(figure.subplots(1, len(matrices)))
    for ax, (name, matrix) in zip(axes, matrices.items(), strict=True):
        cm = np.asarray(matrix)
        ax.imshow(cm, cmap="Blues")
        for (i, j), count in np.ndenumerate(cm):
            dark = count > cm.max() / 2
            ax.text(j, i, str(count), ha="center", va="center", color="white" if dark else "black")
        names = [_tick(label) for label in labels]
        ax.set_xticks(range(len(labels)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), names)
        ax.set(xlabel="predicted", ylabel="true", title=name)
    return _save(figure, path)


def confusion_from_records(records: list[dict[str, Any]], labels: list[str]) -> list[list[int]]:
    """Rows true, columns predicted, from classify records with `label` and `prediction`."""
    index = {label: i for i, label in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), dtype=int)
    for r in records:
        if r.get("label") in index and r.get("prediction") in index:
            cm[index[r["label"]], index[r["prediction"]]] += 1
    return cm.tolist()


def roc_points(records: list[dict[str, Any]], positive: str) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) over every score threshold.

    Tied scores form one step, so the area under these points is the ROC-AUC.
    """
    rows = [r for r in records if r.get("label") is not None and "probabilities" in r]
    scores = np.array([float(r["probabilities"].get(positive, 0.0)) for r in rows])
    is_pos = np.array([r["label"] == positive for r in rows])
    order = np.argsort(-scores, kind="mergesort")
    scores, is_pos = scores[order], is_pos[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1] if len(scores) else []
    tps = np.r_[0, np.cumsum(is_pos)[last]]
    fps = np.r_[0, np.cumsum(~is_pos)[last]]
    n_pos, n_neg = max(int(is_pos.sum()), 1), max(int((~is_pos).sum()), 1)
    return fps / n_neg, tps / n_pos


def roc_curves(sides: dict[str, list[dict[str, Any]]], positive: str, path: Path) -> Path | None:
    """ROC curves of each side's label probabilities, for the class `positive`."""
    figure = Figure(figsize=(4.2, 4.0))
    ax = figure.subplots()
    drawn = False
    for name, records in sides.items():
        fpr, tpr = roc_points(records, positive)
        if len(fpr) < 2:
            continue
        auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
        ax.plot(fpr, tpr, label=f"{name} (AUC {100 * auc:.1f})", color=_colour(name))
        drawn = True
    if not drawn:
        return None
    ax.plot([0, 1], [0, 1], ":", color=NEUTRAL)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {positive}")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(figure, path)


def group_bars(rows: list[dict[str, Any]], what: str, path: Path) -> Path | None:
    """Accuracy per group (answer type / answer), baseline beside tuned."""
    if not rows:
        return None
    figure = Figure(figsize=(max(5.0, 0.9 * len(rows) + 2), 3.6))
    ax = figure.subplots()
    x = np.arange(len(rows))
    base = [r["baseline"] if r["baseline"] is not None else 0.0 for r in rows]
    ax.bar(x - 0.2, base, 0.4, label="baseline", color=COLOURS["baseline"])
    ax.bar(x + 0.2, [r["tuned"] for r in rows], 0.4, label="tuned", color=COLOURS["tuned"])
    names = [f"{_tick(textwrap.shorten(r['group'], 18))}\n(n={r['count']})" for r in rows]
    ax.set_xticks(x, names, rotation=30 if len(rows) > 6 else 0, ha="center", fontsize=8)
    # Headroom above 100% keeps the legend clear of the bars.
    ax.set(ylabel="accuracy (%)", ylim=(0, 122), title=f"Accuracy by {what}")
    ax.set_yticks(range(0, 101, 20))
    ax.legend(loc="upper center", ncol=2, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def comparison_grid(
    pairs: list[Pair], run_dir: Path, path: Path, baseline_name: str, columns: int = 4
) -> Path | None:
    """Side-by-side panels: the image, its question, the reference and both answers."""
    from PIL import Image

    if not pairs:
        return None
    rows = -(-len(pairs) // columns)
    figure = Figure(figsize=(3.0 * columns, 3.9 * rows))
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, pair in zip(axes, pairs, strict=False):
        found = resolve_image(pair.tuned.get("image"), run_dir)
        if found is not None:
            with Image.open(found) as image:
                ax.imshow(np.asarray(image.convert("RGB")))
        question = pair.tuned.get("question") or Path(str(pair.tuned.get("image"))).name
        ax.set_title(textwrap.fill(printable(question), 32), fontsize=8, parse_math=False)
        lines = [
            (f"reference: {pair.reference}", NEUTRAL),
            _answer_line(baseline_name, pair.baseline, pair.baseline_ok),
            _answer_line("tuned", pair.tuned, pair.tuned_ok),
        ]
        for i, (text, colour) in enumerate(lines):
            ax.text(
                0.5, -0.06 - 0.11 * i, textwrap.shorten(printable(text), 36), color=colour,
                fontsize=8, ha="center", va="top", transform=ax.transAxes, parse_math=False,
            )  # fmt: skip
    figure.subplots_adjust(hspace=0.75)
    return _save(figure, path, bbox_inches="tight")


def printable(text: object) -> str:
    """Model output as drawable text: control characters escaped (fonts have no glyphs
    for them); `parse_math=False` at the call keeps "$" literal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _tick(text: str) -> str:
    # Tick labels have no parse_math switch: a "$" is escaped instead.
    return printable(text).replace("$", r"\$")


def _answer_line(name: str, record: dict[str, Any] | None, ok: bool | None) -> tuple[str, str]:
    if record is None:
        return f"{name}: (none)", NEUTRAL
    mark, colour = (
        ("", NEUTRAL) if ok is None else ((" [right]", RIGHT) if ok else (" [wrong]", WRONG))
    )
    answer = record.get("prediction", record.get("error", "")) or "(empty)"
    return f"{name}: {answer}{mark}", colour


def _colour(name: str) -> str:
    return COLOURS["tuned"] if name == "tuned" else COLOURS["baseline"]
