"""The report as one self-contained HTML page (Jinja2, autoescaped).

Figures and thumbnails are inlined as base64 data URIs and the filters are plain inline
JavaScript, so the file opens from disk with no network and can be mailed as it is.
"""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path
from typing import Any

from jinja2 import Environment, StrictUndefined

from softprompt.workflows.report.data import format_number
from softprompt.workflows.report.examples import Thumbnails
from softprompt.workflows.report.inspection import extra_fields
from softprompt.workflows.report.model import Report
from softprompt.workflows.report.template import PAGE

MAX_TEXT_CHARS = 400  # long inputs (text tasks) are cut in the page, whole in the JSONL


def data_uri(path: Path, mime: str = "image/png") -> str:
    """`data:<mime>;base64,...` of a file."""
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render(report: Report) -> str:
    """The page's HTML text."""
    env = Environment(autoescape=True, undefined=StrictUndefined, keep_trailing_newline=True)
    return env.from_string(PAGE).render(**context(report))


def context(report: Report) -> dict[str, Any]:
    """The template's variables."""
    run, baseline = report.run, report.baseline
    figures = [
        {
            "title": f.title,
            "caption": f.caption,
            "section": f.section,
            "file": f.path.name,
            "uri": data_uri(f.path),
        }
        for f in report.figures
    ]
    rows = example_rows(report)
    return {
        "title": f"softprompt report: {run.directory.name}",
        "run_dir": str(run.directory),
        "generated": report.generated,
        "baseline_label": baseline.label if baseline else "",
        "baseline_dir": str(baseline.directory) if baseline else "",
        "summary": summary_rows(report),
        "methods": method_rows(run.results),
        "config_text": run.config_text or "(config.yaml not found)",
        "metric_rows": [_formatted(r) for r in report.metric_rows],
        "task_rows": [_formatted(r) for r in report.task_rows],
        "figures": figures,
        "analysis": [f for f in figures if f["section"] == "analysis"],
        "split": report.split or "",
        "groups": [
            {
                **g,
                "baseline_text": format_number(g["baseline"]),
                "tuned_text": format_number(g["tuned"]),
            }
            for g in report.groups
        ],
        "groups_what": report.groups_what,
        "rows": rows,
        "has_images": any(r["image_name"] for r in rows),
        "text_header": _text_header(report.task_type),
        "counts": report.counts,
        "max_examples": report.max_examples,
        "predictions_file": f"predictions.{report.split}.jsonl",
        **inspection_context(report),
    }


def summary_rows(report: Report) -> list[tuple[str, str]]:
    """(name, value) rows of the run summary table."""
    run, results = report.run, report.run.results
    config = run.config
    model, data = config.get("model") or {}, config.get("data") or {}
    task = config.get("task") or {}
    trainable, total = results.get("trainable_parameters"), results.get("total_parameters")
    share = f" ({100 * trainable / total:.4f}%)" if trainable and total else ""
    rows = [
        ("model", model.get("name_or_path", "?")),
        ("task", f"{task.get('type', '?')}" + _instruction(task)),
        ("methods", ", ".join(results.get("methods") or []) or "?"),
        ("trainable parameters", f"{_count(trainable)} of {_count(total)}{share}"),
        ("training data", _data_line(data)),
        ("steps", f"{results.get('global_step')} ({_epochs(results.get('epoch'))} epochs)"),
        ("best", _best(results)),
        ("training time", _duration(results.get("train_runtime"))),
        ("peak memory", f"{format_number(results.get('peak_memory_mb'))} MB"),
        ("finished", _mtime(run.directory / "all_results.json")),
    ]
    if report.baseline is not None:
        rows.append(("baseline", f"{report.baseline.label}: {report.baseline.directory}"))
    return rows


def method_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    by_method = results.get("trainable_parameters_by_method") or {}
    return [(name, _count(count)) for name, count in by_method.items()]


def example_rows(report: Report) -> list[dict[str, Any]]:
    """The shown pairs as table rows (thumbnails inlined)."""
    thumbs = Thumbnails(report.run.directory)
    instruction = (report.run.config.get("task") or {}).get("instruction") or ""
    rows = []
    for pair in report.shown:
        tuned, base = pair.tuned, pair.baseline
        image = tuned.get("image")
        text = tuned.get("question") or tuned.get("input") or instruction
        rows.append(
            {
                "index": pair.index,
                "image_name": Path(str(image)).name if image else "",
                "thumb": thumbs.data_uri(image) if image else None,
                "text": textwrap.shorten(str(text), MAX_TEXT_CHARS, placeholder=" …"),
                "reference": pair.reference,
                "tuned": _answer(tuned),
                "baseline": _answer(base) if base is not None else "—",
                "tuned_class": _right_class(pair.tuned_ok),
                "baseline_class": _right_class(pair.baseline_ok),
                "status": pair.status,
                "changed": pair.changed,
            }
        )
    return rows


def inspection_context(report: Report) -> dict[str, Any]:
    result = report.inspection
    if result is None:
        return {
            "inspection": None,
            "inspection_error": report.inspection_error or "no result",
            "inspection_extra": {},
            "vocab_mean": "",
            "vocab_std": "",
        }
    tokens = []
    for t in result["tokens"]:
        nearest = [
            {"token": token_text(n), "cosine": format_number(n.get("cosine"))}
            for n in t.get("nearest") or []
        ]
        tokens.append(
            {
                "index": t.get("index"),
                "norm": format_number(t.get("norm")),
                "nearest": nearest,
                "drift": format_number(t.get("drift")),
            }
        )
    vocab = result.get("vocab_norm") or {}
    return {
        "inspection": tokens,
        "inspection_error": None,
        "inspection_extra": {
            k: format_number(v) if isinstance(v, float) else v
            for k, v in extra_fields(result).items()
        },
        "vocab_mean": format_number(vocab.get("mean")),
        "vocab_std": format_number(vocab.get("std")),
    }


def token_text(neighbour: dict[str, Any]) -> str:
    """A vocabulary token as readable text: its decoded form, or its raw piece (e.g.
    "Ġred") when decoding gives a partial UTF-8 byte; control characters escaped."""
    text = str(neighbour.get("token", ""))
    if "\ufffd" in text and neighbour.get("piece"):
        text = str(neighbour["piece"])
    return repr(text)[1:-1]


def _formatted(row: dict[str, Any]) -> dict[str, Any]:
    """A metric row with display text; `*_raw` keep the JSON values for exact checks."""
    better = row["better"]
    return {
        **row,
        "baseline_raw": "" if row["baseline"] is None else repr(row["baseline"]),
        "tuned_raw": "" if row["tuned"] is None else repr(row["tuned"]),
        "baseline_text": format_number(row["baseline"]),
        "tuned_text": format_number(row["tuned"]),
        "delta_text": format_number(row["delta"], signed=True),
        "delta_class": "" if better is None else ("better" if better else "worse"),
    }


def _answer(record: dict[str, Any]) -> str:
    if "error" in record and "prediction" not in record:
        return f"error: {record['error']}"
    text = str(record.get("prediction", "")) or "(empty)"
    probabilities = record.get("probabilities")
    if isinstance(probabilities, dict) and text in probabilities:
        text += f" ({format_number(probabilities[text])})"
    return text


def _right_class(ok: bool | None) -> str:
    return "" if ok is None else ("right" if ok else "wrong")


def _text_header(task_type: str) -> str:
    return {"vqa": "question", "text2text": "input", "caption": "instruction"}.get(
        task_type, "instruction"
    )


def _instruction(task: dict[str, Any]) -> str:
    return f' — "{task["instruction"]}"' if task.get("instruction") else ""


def _data_line(data: dict[str, Any]) -> str:
    parts = [f"train {data.get('train_path')}"]
    for key, name in (("val_test_path", "val"), ("test_path", "test")):
        if data.get(key):
            parts.append(f"{name} {data[key]}")
    if data.get("max_eval_samples"):
        parts.append(f"at most {data['max_eval_samples']} evaluation examples")
    return "; ".join(parts)


def _best(results: dict[str, Any]) -> str:
    if results.get("best_step") is None:
        return "no validation: best/ holds the adapters of the last step"
    return (
        f"{results.get('metric_for_best_model')} = "
        f"{format_number(results.get('best_metric'))} at step {results['best_step']}"
    )


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


def _epochs(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "?"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def _mtime(path: Path) -> str:
    from datetime import datetime, timezone

    if not path.is_file():
        return "?"
    stamp = datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)
    return stamp.isoformat(timespec="seconds")
