"""Prediction inputs and outputs; the model side is `softprompt.inference.loaded.LoadedModel`."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from softprompt.artifacts.manifest import write_bytes_atomically
from softprompt.data.errors import DataError
from softprompt.data.errors import where as location
from softprompt.data.images import IMAGE_EXTENSIONS
from softprompt.data.record_files import (
    _JSON_ERRORS,
    RawRecord,
    _iter_json,
    _json_problem,
    _read_text,
)
from softprompt.data.records import TextExample, VisionExample
from softprompt.data.text import (
    UniqueIds,
    _Fields,
    _iter_rows,
    _template_fields,
    _to_example,
    detect_format,
)
from softprompt.data.vision import load_vision_examples
from softprompt.data.vqa import is_vqa_questions

logger = logging.getLogger("softprompt")


@dataclass(frozen=True)
class UnreadableInput:
    """An input record that could not be read; it answers with an `error` record in its
    place, so every input has exactly one output.

    Attributes:
        id: the record's id (its `id` field, else ``"<file name>:<line>"``).
        error: one line naming the file, line and field, and what to do.
        image_path: the image the record names, when it names one.
    """

    id: str
    error: str
    image_path: str | None = None

    def record(self) -> dict[str, Any]:
        """The output record: id, image (if any) and error."""
        out: dict[str, Any] = {"id": self.id}
        if self.image_path is not None:
            out["image"] = self.image_path
        out["error"] = self.error
        return out


def read_inputs(
    path: str, input_field: str, template: str | None
) -> list[TextExample | UnreadableInput]:
    """Prediction inputs from a JSONL/JSON/CSV file (targets optional), one per record.

    A record that cannot be read (not an object, not JSON, no input field) becomes an
    `UnreadableInput`; a file that cannot be read as records raises.

    Raises:
        DataError: the file is missing, empty, not UTF-8, a malformed JSON array or CSV,
            or repeats an id (names the file and line).
    """
    names = tuple(_template_fields(template)) if template is not None else ()
    fields = _Fields(input_field, "target", "id", template, names, False)
    ids = UniqueIds("id")
    examples: list[TextExample | UnreadableInput] = []
    for row in input_rows(path):
        example = row
        if isinstance(row, RawRecord):
            try:
                example = _to_example(row, fields)
            except DataError as err:
                example = UnreadableInput(_row_id(row), str(err))
        ids.add(example.id, row.where if isinstance(row, RawRecord) else example.error)
        examples.append(example)
    return examples


def input_rows(path: str) -> list[RawRecord | UnreadableInput]:
    """Every record of an input file, in order: JSON Lines line by line (a line that is
    not a JSON object is an `UnreadableInput` naming its line), a JSON array or object,
    CSV/TSV as the data readers read them.

    Raises:
        DataError: the file cannot be read as records at all (names the file and line).
    """
    fmt = detect_format(path)
    if fmt not in ("jsonl", "json"):
        rows: list[RawRecord | UnreadableInput] = list(_iter_rows(path, fmt, "train"))
    else:
        text = _read_text(path)
        stripped = text.lstrip()
        whole_json = stripped.startswith("[") or (fmt == "json" and _one_object(stripped))
        rows = list(_iter_json(path, text) if whole_json else _lines(path, text))
    if not rows:
        raise DataError(f"{path}: no records found")
    return rows


def _one_object(text: str) -> bool:
    if not text.startswith("{"):
        return False
    try:
        return isinstance(json.loads(text), dict)
    except _JSON_ERRORS:
        return False


def _lines(path: str, text: str) -> Iterator[RawRecord | UnreadableInput]:
    """JSON Lines, each non-blank line one record, readable or not."""
    name = Path(path).name
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and other line breaks.
    for lineno, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        default_id, at = f"{name}:{lineno}", location(path, lineno)
        try:
            obj = json.loads(stripped)
        except _JSON_ERRORS as err:
            yield UnreadableInput(default_id, f"{at}: malformed JSON ({_json_problem(err)})")
            continue
        if not isinstance(obj, dict):
            problem = f"expected a JSON object with fields, got {type(obj).__name__}"
            yield UnreadableInput(default_id, f"{at}: {problem}")
            continue
        yield RawRecord(at, default_id, obj)


def _row_id(row: RawRecord) -> str:
    ident = row.record.get("id")
    return row.default_id if ident is None or ident == "" else str(ident)


def split_by_task(
    path: str, tasks: list[str], scratch: Path
) -> tuple[list[str | UnreadableInput], dict[str, tuple[Path, list[int]]]]:
    """Records of a JSONL/JSON input grouped by their `task` field.

    Returns:
        (each record's task in input order, or an `UnreadableInput` where a line is torn
        JSON, not an object or names no task of the bank; task -> (a JSONL file of its
        records under `scratch`, in input order; the line of `path` each came from)).

    Raises:
        DataError: the file cannot be read, or is a JSON array that does not parse.
    """
    source = Path(path)
    order: list[str | UnreadableInput] = []
    groups: dict[str, list[str]] = {}
    lines: dict[str, list[int]] = {}
    for where, row in _bank_rows(source):
        try:
            if isinstance(row, json.JSONDecodeError):
                raise DataError(f"{path}:{where}: not a JSON object ({row.msg})")
            task = _record_task(f"{path}:{where}", row, tasks)
        except DataError as err:
            own = row.get("id") if isinstance(row, dict) else None
            order.append(UnreadableInput(str(own or f"{source.name}:{where}"), str(err)))
            continue
        order.append(task)
        image = row.get("image_path")
        if isinstance(image, str) and image.strip() and not Path(image).expanduser().is_absolute():
            # The scratch files live elsewhere: keep image paths relative to this file.
            row = {**row, "image_path": str(source.parent / Path(image).expanduser())}
        groups.setdefault(task, []).append(json.dumps(row, ensure_ascii=False))
        lines.setdefault(task, []).append(where)
    files = {}
    for task, group in groups.items():
        files[task] = scratch / f"{task}.jsonl"
        files[task].write_text("\n".join(group) + "\n", encoding="utf-8")
    return order, {task: (files[task], lines[task]) for task in files}


def _bank_rows(source: Path) -> list[tuple[int, Any]]:
    """(line or array position, parsed value) of each record; a JSONL line that does not
    parse is its `JSONDecodeError`, so that it answers alone with an error record."""
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{source}: cannot read ({err})") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            return [(i + 1, r) for i, r in enumerate(json.loads(stripped))]
        except json.JSONDecodeError as err:
            raise DataError(f"{source}: not a JSON array ({err})") from None
    rows: list[tuple[int, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                rows.append((number, err))
    return rows


def relocate_errors(examples: list, scratch_file: Path, lines: list[int], source: str) -> list:
    """Examples read from a `split_by_task` scratch file, their ids and messages naming
    the user's `source` file and line (`lines`, by scratch line) instead of the scratch
    file's."""
    pattern = re.compile(re.escape(str(scratch_file)) + r"(?::(\d+))?")
    default_id = re.compile(re.escape(scratch_file.name) + r":(\d+)")

    def original(match: re.Match) -> str:
        number = match.group(1)
        return f"{source}:{lines[int(number) - 1]}" if number else source

    def relocated(example):
        changes = {}
        own = default_id.fullmatch(str(example.id))
        if own:
            changes["id"] = f"{Path(source).name}:{lines[int(own.group(1)) - 1]}"
        if isinstance(example, UnreadableInput):
            changes["error"] = pattern.sub(original, example.error)
        return replace(example, **changes) if changes else example

    return [relocated(e) for e in examples]


def write_records(records: list[dict[str, Any]], output: str | Path) -> None:
    """JSONL for .jsonl paths, else one JSON array; written whole or not at all (a full
    disk keeps the old file and gives a one-line `DiskFullError`)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".jsonl":
        text = "".join(record_json(r) + "\n" for r in records)
    else:
        text = record_json(records, indent=2)
    write_bytes_atomically(output, text.encode("utf-8"), then="rerun predict")


def record_json(value: Any, indent: int | None = None) -> str:
    """JSON text of a record (or list), UTF-8 as is; a file name in another encoding
    (lone surrogates) is written as \\u escapes instead, still valid JSON."""
    text = json.dumps(value, ensure_ascii=False, indent=indent)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, indent=indent)
    return text


def image_inputs(
    images: list[str] | None = None,
    image_dir: str | None = None,
    input_file: str | None = None,
    question: str | None = None,
    task_type: str = "vqa",
) -> list[VisionExample | UnreadableInput]:
    """Prediction inputs from `--image`, `--image-dir` or a JSONL/JSON file of records.

    One input per image flag, per image-named entry of the folder (readable or not, a
    folder excepted) and per record: images are not opened here, so an unreadable one
    still gets its own (error) record. A record without a usable `image_path`, or a vqa
    record without a question, is an `UnreadableInput`. Records of a vqa task carry a
    question (`question` overrides them); caption and classify ignore it.

    Raises:
        DataError: no inputs at all, `image_dir` is not a folder, or `input_file` cannot
            be read as records.
    """
    examples: list[VisionExample | UnreadableInput] = []
    for path in images or []:
        examples.append(VisionExample(id=path, image_path=path, text=question or ""))
    if image_dir is not None:
        examples.extend(_folder_inputs(image_dir, question))
    if input_file is not None:
        examples.extend(_file_image_inputs(input_file, question, task_type))
    if not examples:
        raise DataError("no input images: give --image, --image-dir (with images) or --input")
    return examples


def _folder_inputs(image_dir: str, question: str | None) -> list[VisionExample]:
    """Every entry under `image_dir` named like an image, except folders: a broken link
    or an empty file is an input the user meant, and answers with an error."""
    root = Path(image_dir)
    if not root.is_dir():
        raise DataError(f"--image-dir {image_dir}: not a directory")
    examples = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in IMAGE_EXTENSIONS and not path.is_dir():
            rel = str(path.relative_to(root))
            examples.append(VisionExample(id=rel, image_path=str(path), text=question or ""))
    return examples


def _file_image_inputs(
    input_file: str, question: str | None, task_type: str
) -> list[VisionExample | UnreadableInput]:
    """One input per record of an image-records file (paths relative to its folder)."""
    source = Path(input_file)
    if source.suffix.lower() == ".json" and source.is_file() and is_vqa_questions(source):
        found, _ = load_vision_examples(
            input_file, task_type="vqa", check_images=False, require_text=False
        )
        return [replace(e, text=question or e.text, target=None) for e in found]
    examples: list[VisionExample | UnreadableInput] = []
    for row in input_rows(input_file):
        if isinstance(row, RawRecord):
            row = _image_example(row, source.parent, question, task_type == "vqa")
        examples.append(row)
    return examples


def _image_example(
    row: RawRecord, base: Path, question: str | None, needs_question: bool
) -> VisionExample | UnreadableInput:
    ident, rec = _row_id(row), row.record
    image = rec.get("image_path")
    if not isinstance(image, str) or not image.strip():
        got = "missing" if "image_path" not in rec else f"{json.dumps(image, default=str)[:60]}"
        return UnreadableInput(
            ident, f"{row.where}: field 'image_path' must be an image file's path (got {got})"
        )
    path = Path(image).expanduser()
    path = path if path.is_absolute() else base / path
    asked = rec.get("question")
    text = question or (asked if isinstance(asked, str) else "")
    if needs_question and not text.strip():
        return UnreadableInput(
            ident,
            f"{row.where}: no question (field 'question' is missing or not text); add one, "
            "or pass --question",
            str(path),
        )
    return VisionExample(id=ident, image_path=str(path), text=text)


def asks_questions(input_file: str) -> bool:
    """Whether some record of an image-records file has a `question` (zero-shot predict
    then answers questions instead of captioning)."""
    return any(
        isinstance(row, RawRecord) and isinstance(row.record.get("question"), str)
        for row in input_rows(input_file)
    )


def summarize(records: list[dict[str, Any]], by_prediction: bool = True) -> dict[str, Any]:
    """Counts of records and of unreadable inputs, and per prediction unless told not to
    (generated text seldom repeats); printed after a run."""
    errors = sum(1 for r in records if "error" in r)
    summary: dict[str, Any] = {"total": len(records), "errors": errors}
    if by_prediction:
        counts: dict[str, int] = {}
        for record in records:
            if "prediction" in record:
                counts[record["prediction"]] = counts.get(record["prediction"], 0) + 1
        summary["predictions"] = counts
    return summary


# JSON's names for what a line holds, for the message about a line that is no object.
_JSON_KINDS = {str: "string", list: "array", int: "number", float: "number", bool: "boolean"}


def _record_task(where: str, row: Any, tasks: list[str]) -> str:
    """The bank task an --input record names (`where` is FILE:LINE).

    Raises:
        DataError: the record is not a JSON object, has no `task`, or names no task of
            the bank; the message lists the bank's tasks.
    """
    known = ", ".join(tasks)
    if not isinstance(row, dict):
        kind = "null" if row is None else _JSON_KINDS.get(type(row), type(row).__name__)
        raise DataError(
            f"{where}: a record must be a JSON object with a 'task' field naming one of the "
            f"bank's tasks ({known}); this line holds a JSON {kind}"
        )
    task = row.get("task")
    if task is None:
        raise DataError(
            f"{where}: the record has no 'task' field; with this prompt bank each record "
            f"names its task ({known}), or pass --task NAME for all of them"
        )
    if not isinstance(task, str) or task not in tasks:
        raise DataError(
            f"{where}: 'task' {repr(task)[:80]} is not one of the bank's tasks ({known})"
        )
    return task
