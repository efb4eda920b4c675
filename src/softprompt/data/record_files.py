"""Record files: JSONL, JSON (array or JSON-lines content) and CSV/TSV, read line-aware.

Every record carries its location (file and 1-based line, or data row), so any later
error about it can say exactly where to look.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softprompt.data.errors import DataError, looked_for, where


@dataclass
class RawRecord:
    """One record as read from a source, before field mapping.

    Attributes:
        where: location prefix for error messages, e.g. ``"data/train.jsonl:17"``.
        default_id: the id to use when the record has no id field.
        record: the record's fields.
    """

    where: str
    default_id: str
    record: Mapping[str, Any]


def _read_text(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        what = "is a directory, not a file" if p.is_dir() else "file not found"
        raise DataError(f"{path}: {what} (looked for {looked_for(p)})")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at column {col}); "
            "re-save the file as UTF-8"
        ) from e
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    return text


# Besides JSONDecodeError, json.loads raises RecursionError for deeply nested input and
# ValueError for integers longer than Python's digit limit; both are bad lines too.
_JSON_ERRORS = (ValueError, RecursionError)


def _json_problem(e: Exception) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} at column {e.colno}"
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return str(e).split(":", 1)[0]


def _iter_jsonl(path: str, text: str) -> Iterator[RawRecord]:
    name = Path(path).name
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and other line breaks.
    for lineno, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        try:
            obj = json.loads(stripped)
        except _JSON_ERRORS as e:
            hint = "; the file looks like a JSON array, use format json" if stripped == "[" else ""
            raise DataError(f"{path}:{lineno}: malformed JSON ({_json_problem(e)}){hint}") from e
        yield _object_row(path, name, lineno, obj)


def _iter_json(path: str, text: str) -> Iterator[RawRecord]:
    stripped = text.lstrip()
    if stripped.startswith("{"):
        # One pretty-printed object is one record; anything else is JSON Lines in a .json file.
        try:
            obj = json.loads(text)
        except _JSON_ERRORS:
            yield from _iter_jsonl(path, text)
            return
        yield _object_row(
            path, Path(path).name, text.count("\n", 0, len(text) - len(stripped)) + 1, obj
        )
        return
    if not stripped.startswith("["):
        yield from _iter_jsonl(path, text)
        return
    yield from _iter_json_array(path, text)


def _iter_json_array(path: str, text: str) -> Iterator[RawRecord]:
    # Decode element by element so each record knows its line, for ids and error messages.
    name = Path(path).name
    decoder = json.JSONDecoder()
    skip_ws = json.decoder.WHITESPACE.match
    pos = text.index("[") + 1
    line, counted = 1, 0

    def line_at(i: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, i)
        counted = i
        return line

    pos = skip_ws(text, pos).end()
    previous_line, on_line = 0, 0
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            try:
                obj, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})"
                ) from e
            except _JSON_ERRORS as e:
                raise DataError(
                    f"{path}:{line_at(pos)}: malformed JSON ({_json_problem(e)})"
                ) from e
            # Ids are `name:line`; records sharing a line (an array written on one line
            # by `json.dump`) get `name:line:k` after the first, so ids stay unique.
            at = line_at(pos)
            on_line = on_line + 1 if at == previous_line else 0
            previous_line = at
            default_id = f"{name}:{at}:{on_line + 1}" if on_line else None
            yield _object_row(path, name, at, obj, default_id)
            pos = skip_ws(text, end).end()
            if text.startswith(",", pos):
                pos = skip_ws(text, pos + 1).end()
                continue
            if text.startswith("]", pos):
                pos += 1
                break
            raise DataError(f"{path}:{line_at(pos)}: malformed JSON (expected ',' or ']')")
    if text[pos:].strip():
        raise DataError(f"{path}:{line_at(pos)}: malformed JSON (extra data after the array)")


def _object_row(
    path: str, name: str, line: int, obj: Any, default_id: str | None = None
) -> RawRecord:
    if not isinstance(obj, dict):
        raise DataError(
            f"{path}:{line}: expected a JSON object with fields, got {type(obj).__name__}"
        )
    return RawRecord(where(path, line), default_id or f"{name}:{line}", obj)


def _iter_csv(path: str, text: str, delimiter: str) -> Iterator[RawRecord]:
    name = Path(path).name
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
        if len(set(header)) != len(header):
            raise DataError(f"{path}:1: duplicate column names in the header ({', '.join(header)})")
        row_index, start = 0, reader.line_num + 1
        for row in reader:
            if row:  # csv yields [] for blank lines
                if len(row) != len(header):
                    raise DataError(
                        f"{path}:{start}: {len(row)} fields but the header has {len(header)} "
                        f"({', '.join(header)}); check quoting and the delimiter"
                    )
                # An empty cell is CSV's only way to say "no value".
                record = {k: (v if v != "" else None) for k, v in zip(header, row, strict=True)}
                yield RawRecord(where(path, start), f"{name}:{row_index}", record)
                row_index += 1
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from e


# ----------------------------------------------------------------------------- datasets sources
