"""Text-to-text readers: JSONL, JSON, CSV/TSV, built-in datasets and Hugging Face datasets.

Every source becomes a list of `TextExample`. Problems in the user's data raise
`DataError` with the file, the 1-based line, the field and the fields that were
present, so a bad line in a 100k-line file can be fixed without a debugger.

Default ids when a record has no `id_field` (error messages use the same locations,
1-based lines for files, 0-based rows for Hugging Face datasets):
    * JSONL / JSON: ``"<filename>:<line>"`` (the line where the record starts).
    * CSV / TSV: ``"<filename>:<row>"`` with the 0-based data row (header excluded).
    * Hugging Face datasets: ``"<name>:<split>:<row>"`` with the 0-based row.
"""

from __future__ import annotations

import importlib.util
import json
import re
import string
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softprompt.data.errors import DataError, check_encodable, fields_present, looked_for
from softprompt.data.record_files import (
    RawRecord,
    _iter_csv,
    _iter_json,
    _iter_jsonl,
    _read_text,
)
from softprompt.data.records import TextExample

SUPPORTED_FORMATS = ("jsonl", "json", "csv", "tsv", "builtin", "hf", "hf_disk")
_FORMATS_HELP = (
    "supported formats: jsonl (.jsonl), json (.json), csv (.csv), tsv (.tsv), "
    "builtin (builtin:NAME/...), hf (hf:ID[:CONFIG]), hf_disk (a datasets save_to_disk directory)"
)
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv"}
_SAVE_TO_DISK_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")
# Canonical split names, so "val", "dev" and "validation" find each other whatever a source uses.
_SPLIT_ALIASES = {
    "training": "train",
    "val": "validation",
    "valid": "validation",
    "dev": "validation",
}


BuiltinLoader = Callable[[str, str], Iterator[RawRecord]]
"""A built-in dataset: ``(argument after "NAME/", split) -> records`` with fields
``id``, ``input`` and ``target`` (a string or a list of reference strings)."""


def detect_format(path: str) -> str:
    """Tell a source's format from its spec or file name.

    Args:
        path: a file path, a ``builtin:`` / ``hf:`` spec, or a save_to_disk directory.

    Returns:
        One of `SUPPORTED_FORMATS`.

    Raises:
        DataError: the file does not exist or its format cannot be told.
    """
    if path.startswith("builtin:"):
        return "builtin"
    if path.startswith("hf:"):
        return "hf"
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: file not found (looked for {looked_for(p)})")
    if p.is_dir():
        if any((p / name).is_file() for name in _SAVE_TO_DISK_MARKERS):
            return "hf_disk"
        raise DataError(
            f"{path}: is a directory but not one written by datasets' save_to_disk "
            f"(no {', '.join(_SAVE_TO_DISK_MARKERS)}); {_FORMATS_HELP}"
        )
    fmt = _SUFFIX_FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: cannot tell the format from the file name; {_FORMATS_HELP}")
    return fmt


def load_text_examples(
    path: str,
    *,
    format: str | None = None,
    input_field: str = "input",
    target_field: str = "target",
    id_field: str = "id",
    template: str | None = None,
    split: str = "train",
    max_samples: int | None = None,
    require_target: bool = True,
) -> list[TextExample]:
    """Read text-to-text examples from a file, a built-in dataset or a Hugging Face dataset.

    Args:
        path: a ``.jsonl`` / ``.json`` / ``.csv`` / ``.tsv`` file, ``builtin:aclsum/<aspect>[/<split>]``,
            ``hf:<id>[:<config>]`` or a directory written by ``datasets``' ``save_to_disk``.
        format: one of `SUPPORTED_FORMATS`; None detects it from `path`.
        input_field: the field holding the source text (ignored by built-ins).
        target_field: the field holding the reference; a list of strings gives several
            references, the first being the target (ignored by built-ins).
        id_field: the field holding the example id; missing ids get a location-based one.
        template: optional format string such as ``"Summarize: {input}"``; ``{input}`` is the
            input field's value, any other ``{name}`` is that field of the record.
        split: which split to read from built-ins and Hugging Face datasets
            ("val", "validation" and "dev" are synonyms). Ignored for plain files.
        max_samples: keep only the first N records (in file order).
        require_target: False allows records without the target (prediction inputs).

    Returns:
        The examples, in source order.

    Raises:
        DataError: the source is missing, unreadable, malformed or lacks a field.
        ValueError: `max_samples` is negative.
    """
    if max_samples is not None and max_samples < 0:
        raise ValueError(f"max_samples must be >= 0, got {max_samples}")
    fmt = format if format is not None else detect_format(path)
    if fmt not in SUPPORTED_FORMATS:
        raise DataError(f"{path}: unknown format {fmt!r}; {_FORMATS_HELP}")
    template_names = tuple(_template_fields(template)) if template is not None else ()
    if max_samples == 0:
        return []
    # Built-ins define their own fields; user field names refer to the user's own files.
    names = ("input", "target", "id") if fmt == "builtin" else (input_field, target_field, id_field)
    fields = _Fields(*names, template, template_names, require_target)
    examples: list[TextExample] = []
    ids = UniqueIds(fields.id)
    for row in _iter_rows(path, fmt, split):
        example = _to_example(row, fields)
        ids.add(example.id, row.where)
        examples.append(example)
        if max_samples is not None and len(examples) >= max_samples:
            break
    if not examples:
        raise DataError(f"{path}: no records found")
    return examples


def record_input(
    record: dict[str, Any],
    input_field: str = "input",
    template: str | None = None,
    where: str = "request",
) -> str:
    """The text a model reads for one input record, as a record of a file is read: its
    `input_field` value, through `template` (`{input}` and any other field it names).

    Args:
        where: what error messages call the record.

    Raises:
        DataError: the field is missing or not text, or the template names a field the
            record lacks.
    """
    names = tuple(_template_fields(template)) if template is not None else ()
    fields = _Fields(input_field, "target", "id", template, names, False)
    return _to_example(RawRecord(where, where, record), fields).input


# ----------------------------------------------------------------------------- field mapping


class UniqueIds:
    """Refuses a second record with an id already seen: predictions are keyed by id."""

    def __init__(self, id_field: str, fix: str | None = None) -> None:
        self.fix = fix or (
            f"Fix the {id_field!r} values, or set data.id_field to a field the records lack "
            "to number them by line instead"
        )
        self.seen: dict[str, str] = {}

    def add(self, ident: str, loc: str) -> None:
        first = self.seen.get(ident)
        if first is None:
            self.seen[ident] = loc
            return
        raise DataError(
            f"{loc}: duplicate id {ident!r} (first at {first}); ids must be unique, "
            f"since predictions are matched to inputs by id. {self.fix}"
        )


@dataclass(frozen=True)
class _Fields:
    input: str
    target: str
    id: str
    template: str | None
    template_names: tuple[str, ...]
    require_target: bool


def _to_example(row: RawRecord, f: _Fields) -> TextExample:
    rec = row.record
    text = _as_text(_required(row, f.input, "data.input_field"), row.where, f.input)
    if f.template is not None:
        text = _apply_template(f.template, f.template_names, text, row)
    target: str | None = None
    references: list[str] = []
    if f.require_target or rec.get(f.target) is not None:
        raw = _required(row, f.target, "data.target_field")
        if isinstance(raw, list):
            if not raw:
                raise DataError(f"{row.where}: field {f.target!r} is an empty list")
            references = [_as_text(r, row.where, f.target) for r in raw]
        else:
            references = [_as_text(raw, row.where, f.target, "a string or a list of strings")]
        target = references[0]
    ident = rec.get(f.id)
    return TextExample(
        id=row.default_id if ident is None or ident == "" else str(ident),
        input=text,
        target=target,
        references=references,
    )


def _required(row: RawRecord, field: str, option: str) -> Any:
    rec = row.record
    if field not in rec:
        raise DataError(
            f"{row.where}: missing field {field!r} (fields present: {fields_present(rec)}); "
            f"set {option}"
        )
    if rec[field] is None:
        raise DataError(
            f"{row.where}: field {field!r} is empty (fields present: {fields_present(rec)})"
        )
    return rec[field]


def _as_text(value: Any, loc: str, field: str, expected: str = "a string") -> str:
    if isinstance(value, str):
        return check_encodable(value, loc, field)
    # JSON numbers and booleans are plausible answers ("2", "True"); keep them as text.
    if isinstance(value, (bool, int, float)):
        return str(value)
    preview = json.dumps(value, default=str)[:60]
    raise DataError(
        f"{loc}: field {field!r} is a {type(value).__name__} ({preview}); expected {expected}"
    )


def _template_fields(template: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise DataError(
            f"template {template!r}: {e}; write literal braces as '{{{{' and '}}}}'"
        ) from e
    names = []
    for _, field_name, _, _ in parsed:
        if field_name is None:
            continue
        base = re.split(r"[.\[]", field_name, maxsplit=1)[0]
        if not base or base.isdigit():
            raise DataError(
                f"template {template!r}: positional field '{{{field_name}}}'; "
                "name a record field, e.g. {input}"
            )
        names.append(base)
    return names


def _apply_template(template: str, names: Sequence[str], text: str, row: RawRecord) -> str:
    values = dict(row.record)
    values["input"] = text
    for name in names:
        if values.get(name) is None:
            raise DataError(
                f"{row.where}: template {template!r} names field {name!r}, which this record "
                f"lacks (fields present: {fields_present(row.record)})"
            )
    try:
        formatted = template.format_map(values)
    except (KeyError, IndexError, AttributeError, ValueError, TypeError) as e:
        raise DataError(f"{row.where}: template {template!r} failed: {e}") from e
    return check_encodable(formatted, row.where, "template output")


# ----------------------------------------------------------------------------- file readers


def _iter_rows(path: str, fmt: str, split: str) -> Iterator[RawRecord]:
    if fmt == "builtin":
        return _iter_builtin(path, split)
    if fmt == "hf":
        return _iter_hf(path, split)
    if fmt == "hf_disk":
        return _iter_hf_disk(path, split)
    text = _read_text(path)
    if fmt == "jsonl":
        return _iter_jsonl(path, text)
    if fmt == "json":
        return _iter_json(path, text)
    return _iter_csv(path, text, "," if fmt == "csv" else "\t")


def _pick_split(requested: str, available: Sequence[str], source: str) -> str:
    if requested in available:
        return requested
    canon = _SPLIT_ALIASES.get(requested.lower(), requested.lower())
    for name in available:
        if _SPLIT_ALIASES.get(name.lower(), name.lower()) == canon:
            return name
    raise DataError(f"{source}: no split {requested!r} (available splits: {', '.join(available)})")


def _iter_dataset(ds: Any, source: str, id_prefix: str) -> Iterator[RawRecord]:
    for i, rec in enumerate(ds):
        yield RawRecord(f"{source} row {i}", f"{id_prefix}:{i}", rec)


def _iter_hf(spec: str, split: str) -> Iterator[RawRecord]:
    name, _, config = spec.removeprefix("hf:").partition(":")
    if not name:
        raise DataError(f"{spec}: expected hf:<dataset id>[:<config>]")
    import datasets  # heavy; only sources that need it pay for the import

    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # any loader failure becomes one clear message
        raise DataError(
            f"{spec}: cannot load dataset {name!r} (config {config or None!r}, split {split!r}): "
            f"{type(e).__name__}: {e}"
        ) from e
    yield from _iter_dataset(ds, f"{spec}[{split}]", f"{name}:{split}")


def _iter_hf_disk(path: str, split: str) -> Iterator[RawRecord]:
    import datasets

    try:
        obj = datasets.load_from_disk(path)
    except Exception as e:  # whatever datasets raises, name the directory
        raise DataError(f"{path}: cannot read the save_to_disk directory: {e}") from e
    name = Path(path).name
    if isinstance(obj, datasets.DatasetDict):
        chosen = _pick_split(split, list(obj.keys()), path)
        yield from _iter_dataset(obj[chosen], f"{path}[{chosen}]", f"{name}:{chosen}")
    else:
        yield from _iter_dataset(obj, path, name)


# ----------------------------------------------------------------------------- built-ins

ACLSUM_ASPECTS = ("challenge", "approach", "outcome")
_ACLSUM_SPLITS = ("train", "val", "test")


def _load_aclsum(arg: str, split: str) -> Iterator[RawRecord]:
    """ACLSum: abstract -> one aspect summary (``builtin:aclsum/<aspect>[/<split>]``)."""
    spec = f"builtin:aclsum/{arg}"
    parts = arg.split("/") if arg else []
    if not parts or parts[0] not in ACLSUM_ASPECTS or len(parts) > 2:
        raise DataError(
            f"{spec}: unknown aspect {parts[0] if parts else ''!r}; valid aspects: "
            f"{', '.join(ACLSUM_ASPECTS)} (e.g. builtin:aclsum/challenge or "
            "builtin:aclsum/challenge/val)"
        )
    aspect = parts[0]
    split_file = _pick_split(parts[1] if len(parts) == 2 else split, _ACLSUM_SPLITS, spec)
    # Do not import aclsum: its __init__ imports a dependency we do not install.
    found = importlib.util.find_spec("aclsum")
    if found is None or not found.submodule_search_locations:
        raise DataError(f"{spec}: needs the aclsum package (pip install --no-deps aclsum==0.1.2)")
    file = Path(list(found.submodule_search_locations)[0]) / "dataset" / f"{split_file}.jsonl"
    for row in _iter_jsonl(str(file), _read_text(file)):
        rec = row.record
        try:
            sentences = rec["sentences"]["abstract"]
            summary = rec["summary"][aspect]
        except (KeyError, TypeError) as e:
            raise DataError(
                f"{row.where}: aclsum record lacks sentences.abstract or summary.{aspect} "
                f"(fields present: {fields_present(rec)})"
            ) from e
        target = " ".join(summary) if isinstance(summary, list) else summary
        yield RawRecord(
            row.where,
            f"aclsum/{split_file}:{row.default_id.rsplit(':', 1)[1]}",
            {
                "id": rec.get("id"),
                "title": rec.get("title"),
                "aspect": aspect,
                "input": " ".join(sentences),
                "target": target,
            },
        )


BUILTIN_TEXT_DATASETS: dict[str, BuiltinLoader] = {"aclsum": _load_aclsum}
"""Built-in text datasets by the name used in ``builtin:<name>/...`` specs."""


def register_builtin_text_dataset(name: str, loader: BuiltinLoader) -> None:
    """Add a built-in text dataset; names are unique.

    Raises:
        ValueError: `name` is already registered.
    """
    if name in BUILTIN_TEXT_DATASETS:
        raise ValueError(f"builtin text dataset {name!r} is already registered")
    BUILTIN_TEXT_DATASETS[name] = loader


def _iter_builtin(spec: str, split: str) -> Iterator[RawRecord]:
    name, _, arg = spec.removeprefix("builtin:").partition("/")
    loader = BUILTIN_TEXT_DATASETS.get(name)
    if loader is None:
        raise DataError(
            f"{spec}: unknown builtin dataset {name!r}; available: "
            f"{', '.join(sorted(BUILTIN_TEXT_DATASETS))}"
        )
    return loader(arg, split)
