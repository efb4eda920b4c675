"""Prediction inputs and outputs; the model side is `softprompt.inference.loaded.LoadedModel`."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from softprompt.data.errors import DataError
from softprompt.data.images import IMAGE_EXTENSIONS
from softprompt.data.records import TextExample, VisionExample
from softprompt.data.text import load_text_examples
from softprompt.data.vision import load_vision_examples

logger = logging.getLogger("softprompt")


def read_inputs(path: str, input_field: str, template: str | None) -> list[TextExample]:
    """Prediction inputs from a JSONL/JSON/CSV file (targets optional)."""
    return load_text_examples(
        path, input_field=input_field, template=template, require_target=False
    )


def split_by_task(path: str, tasks: list[str], scratch: Path) -> tuple[list[str], dict[str, Path]]:
    """Records of a JSONL/JSON input grouped by their `task` field.

    Returns:
        (each record's task, in input order; task -> a JSONL file of its records under
        `scratch`, in input order).

    Raises:
        DataError: an unreadable file, or a record without a known task (names its line).
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read ({err})") from None
    stripped = text.lstrip()
    try:
        if stripped.startswith("["):
            rows = [(i + 1, r) for i, r in enumerate(json.loads(stripped))]
        else:
            rows = [
                (n, json.loads(line)) for n, line in enumerate(text.splitlines(), 1) if line.strip()
            ]
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not JSONL or a JSON array ({err})") from None
    order: list[str] = []
    groups: dict[str, list[str]] = {}
    for where, row in rows:
        task = row.get("task") if isinstance(row, dict) else None
        if task not in tasks:
            raise DataError(
                f"{path}:{where}: 'task' must name one of the bank's tasks "
                f"({', '.join(tasks)}); got {task!r}"
            )
        order.append(task)
        groups.setdefault(task, []).append(json.dumps(row, ensure_ascii=False))
    files = {}
    for task, lines in groups.items():
        files[task] = scratch / f"{task}.jsonl"
        files[task].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return order, files


def write_records(records: list[dict[str, Any]], output: str | Path) -> None:
    """JSONL for .jsonl paths, else one JSON array."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:
        text = json.dumps(records, ensure_ascii=False, indent=2)
    output.write_text(text, encoding="utf-8")


def image_inputs(
    images: list[str] | None = None,
    image_dir: str | None = None,
    input_file: str | None = None,
    question: str | None = None,
    task_type: str = "vqa",
) -> list[VisionExample]:
    """Prediction inputs from `--image`, `--image-dir` or a JSONL/JSON file of records.

    Records of a vqa task carry a question; for caption and classify only the image is
    needed (a question field, if present, is ignored).
    """
    examples: list[VisionExample] = []
    for path in images or []:
        examples.append(VisionExample(id=path, image_path=path, text=question or ""))
    if image_dir is not None:
        root = Path(image_dir)
        if not root.is_dir():
            raise DataError(f"--image-dir {image_dir}: not a directory")
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                rel = str(path.relative_to(root))
                examples.append(VisionExample(id=rel, image_path=str(path), text=question or ""))
    if input_file is not None:
        reader = "vqa" if task_type == "vqa" else "caption"
        found, _ = load_vision_examples(
            input_file, task_type=reader, check_images=False, require_text=False
        )
        for e in found:
            examples.append(replace(e, text=question or e.text, target=None))
    if not examples:
        raise DataError("no input images: give --image, --image-dir (with images) or --input")
    return examples


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per prediction and of unreadable inputs (printed after a run)."""
    counts: dict[str, int] = {}
    for record in records:
        if "prediction" in record:
            counts[record["prediction"]] = counts.get(record["prediction"], 0) + 1
    errors = sum(1 for r in records if "error" in r)
    return {"total": len(records), "errors": errors, "predictions": counts}
