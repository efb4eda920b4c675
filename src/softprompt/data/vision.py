"""Image readers: class folders, image-text JSON/JSONL, VQAv2 and easy-vqa.

Every source becomes a list of `VisionExample` plus a `LoadReport` of the images that
were skipped (missing, corrupt, not images, too large) and of warnings about the data.
Problems in the data files themselves (a missing field, malformed JSON, a layout the
reader cannot use) raise `DataError` naming the file, the line and the field, as the
text readers do.

Sources by spec (see `load_vision_examples`):
    * a directory: one folder per class (``train/ai/*.png``, ``train/nature/*.png``).
    * ``.json`` / ``.jsonl``: image-text pairs (``image_path`` + ``text``), or a VQAv2
      questions file (a JSON object with a ``questions`` list).
    * ``builtin:easy-vqa[/train|/test]``: the easy-vqa package's shapes dataset.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from softprompt.data.errors import DataError, check_encodable, looked_for
from softprompt.data.images import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS
from softprompt.data.load_report import ImageChecker, LoadReport
from softprompt.data.record_files import RawRecord, _iter_json, _iter_jsonl, _read_text
from softprompt.data.records import VisionExample
from softprompt.data.text import UniqueIds, _as_text, _required
from softprompt.data.vqa import (
    EASY_VQA_SPEC,
    annotations_path_for,
    easy_vqa_answers,
    easy_vqa_split,
    is_vqa_questions,
    load_easy_vqa,
    load_vqa,
)

__all__ = [
    "LoadReport",
    "easy_vqa_answers",
    "load_easy_vqa",
    "load_image_folder",
    "load_image_text_pairs",
    "load_vision_examples",
    "load_vqa",
]

_LAYOUT_HELP = (
    "expected one folder per class with the images inside, e.g. train/ai/*.png and "
    f"train/nature/*.png (image types: {', '.join(IMAGE_EXTENSIONS)})"
)
# Folders that tools leave next to the data; never classes.
_IGNORED_DIRS = ("__MACOSX",)


# ----------------------------------------------------------------------------- class folders


def load_image_folder(
    root: str | Path,
    *,
    strict: bool = False,
    check_images: bool = True,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
) -> tuple[list[VisionExample], list[str], LoadReport]:
    """Read a classification dataset laid out as ``root/<class>/<image>``.

    Images are found in each class folder and its subfolders, by extension
    (`IMAGE_EXTENSIONS`, case-insensitive); other files and hidden files/folders
    (``.DS_Store``, ``._x.jpg``, ``.ipynb_checkpoints``) are ignored silently.

    Args:
        root: the dataset folder (e.g. ``data/train``).
        strict: raise on the first unusable image instead of skipping it.
        check_images: decode every image once to catch corrupt files; False only checks
            that they exist.
        max_pixels: decompression-bomb limit per image (see `load_image`).

    Returns:
        ``(examples, classes, report)``: examples sorted by class then path, with
        ``label == target ==`` the class name and ``id`` the path relative to `root`;
        the class names (sorted, only classes with at least one usable image); and the
        report. A class folder without usable images is left out with a warning; a
        single class is allowed, with a warning (classification needs two).

    Raises:
        DataError: `root` is missing, has no class folders, or no usable images at all.
        ImageError: with `strict`, the first unusable image.
    """
    base = Path(root)
    if not base.exists():
        raise DataError(f"{root}: folder not found (looked for {looked_for(base)}); {_LAYOUT_HELP}")
    if not base.is_dir():
        raise DataError(f"{root}: is a file, not a folder of class folders; {_LAYOUT_HELP}")
    report = LoadReport()
    checker = ImageChecker(report, strict=strict, check_images=check_images, max_pixels=max_pixels)
    class_dirs = _class_folders(root, base, report)
    examples: list[VisionExample] = []
    classes: list[str] = []
    for folder in class_dirs:
        found = _class_examples(folder, base, checker, report)
        if found:
            examples.extend(found)
            classes.append(folder.name)
    if not examples:
        names = ", ".join(d.name for d in class_dirs)
        detail = f"; {report.summary()}" if report.skipped else ""
        raise DataError(f"{root}: no usable images in the class folders ({names}){detail}")
    if len(classes) == 1:
        report.warn(
            f"{root}: only one class ({classes[0]!r}); classification needs at least two "
            "classes to learn anything"
        )
    return examples, classes, report


def _class_folders(root: str | Path, base: Path, report: LoadReport) -> list[Path]:
    """The class folders of `base`, sorted; warns about images lying loose beside them."""
    class_dirs = sorted(
        (d for d in base.iterdir() if d.is_dir() and not _hidden(d.name)),
        key=lambda d: d.name,
    )
    class_dirs = [d for d in class_dirs if d.name not in _IGNORED_DIRS]
    for folder in class_dirs:
        # The class name becomes words the model reads: it must be real text.
        check_encodable(folder.name, f"{_printable_path(folder)}", "class folder name")
    loose = [f for f in base.iterdir() if f.is_file() and _is_image_name(f.name)]
    if not class_dirs:
        found = f" (found {len(loose)} image(s) directly inside it)" if loose else ""
        raise DataError(f"{root}: no class folders{found}; {_LAYOUT_HELP}")
    if loose:
        report.warn(
            f"{root}: {len(loose)} image(s) directly inside the dataset folder are ignored; "
            "move them into a class folder"
        )
    return class_dirs


def _class_examples(
    folder: Path, base: Path, checker: ImageChecker, report: LoadReport
) -> list[VisionExample]:
    """One class folder's usable images; [] (with a warning) when it has none."""
    files = list(_iter_images(folder))
    if not files:
        report.warn(f"{folder}: class folder {folder.name!r} has no images; class left out")
        return []
    examples = [
        VisionExample(
            id=_printable_path(file.relative_to(base)),
            image_path=str(file),
            target=folder.name,
            references=[folder.name],
            label=folder.name,
        )
        for file in files
        if checker.usable(str(file))
    ]
    if not examples:
        report.warn(
            f"{folder}: none of the {len(files)} image(s) of class {folder.name!r} could "
            "be read; class left out"
        )
    return examples


def _printable_path(path: Path) -> str:
    # File names in another encoding arrive as lone surrogates; ids must be valid text
    # (they go into JSON), and \\xNN escapes keep them unique and recognisable.
    return os.fsencode(path.as_posix()).decode("utf-8", "backslashreplace")


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image_name(name: str) -> bool:
    return not _hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def _iter_images(folder: Path) -> Iterator[Path]:
    for file in sorted(folder.rglob("*")):
        rel = file.relative_to(folder).parts
        if any(_hidden(part) for part in rel) or not file.is_file():
            continue
        if file.name.lower().endswith(IMAGE_EXTENSIONS):
            yield file


# ----------------------------------------------------------------------------- image-text pairs


def load_image_text_pairs(
    path: str | Path,
    *,
    image_field: str = "image_path",
    text_field: str = "text",
    prompt_field: str | None = None,
    id_field: str = "id",
    require_text: bool = True,
    strict: bool = False,
    check_images: bool = True,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
) -> tuple[list[VisionExample], LoadReport]:
    """Read image-text pairs from a JSON array or JSON Lines file.

    The format of seed 001: ``[{"image_path": "images/1.jpg", "text": "a caption"}, ...]``.
    Relative image paths are relative to the data file's folder; absolute ones are kept.

    Args:
        path: a ``.json`` (array, one object, or JSON Lines) or ``.jsonl`` file.
        image_field: the field holding the image path.
        text_field: the field holding the reference text (caption or answer); a list of
            strings gives several references, the first being the target.
        prompt_field: optional field holding a question/instruction (`VisionExample.text`).
        id_field: the field holding an id; missing ids become ``"<filename>:<line>"``.
        require_text: False allows records without `text_field` (prediction inputs).
        strict: raise on the first unusable image instead of skipping it.
        check_images: decode every image once; False only checks that files exist.
        max_pixels: decompression-bomb limit per image (see `load_image`).

    Returns:
        ``(examples, report)`` in file order.

    Raises:
        DataError: the file is missing, malformed, has no records or a record lacks a field.
        ImageError: with `strict`, the first unusable image (prefixed with file:line).
    """
    p = Path(path)
    rows = _pair_rows(path)
    report = LoadReport()
    checker = ImageChecker(report, strict=strict, check_images=check_images, max_pixels=max_pixels)
    examples: list[VisionExample] = []
    ids = UniqueIds(id_field)
    seen = 0
    for row in rows:
        seen += 1
        example = _pair_example(
            row, p.parent, image_field, text_field, prompt_field, id_field, require_text
        )
        ids.add(example.id, row.where)
        if checker.usable(example.image_path, row.where):
            examples.append(example)
    if not seen:
        raise DataError(f"{path}: no records found")
    if not examples:
        raise DataError(
            f"{path}: none of the {seen} records has a usable image; {report.summary()}"
        )
    return examples, report


def _pair_rows(path: str | Path) -> Iterator[RawRecord]:
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".json", ".jsonl"):
        raise DataError(f"{path}: image-text pairs must be a .json or .jsonl file")
    text = _read_text(p)
    return _iter_jsonl(str(path), text) if suffix == ".jsonl" else _iter_json(str(path), text)


def _pair_example(
    row: RawRecord,
    base: Path,
    image_field: str,
    text_field: str,
    prompt_field: str | None,
    id_field: str,
    require_text: bool,
) -> VisionExample:
    rec = row.record
    image = _as_text(_required(row, image_field, "data.image_field"), row.where, image_field)
    if not image.strip():
        raise DataError(f"{row.where}: field {image_field!r} is an empty path")
    image_path = Path(image).expanduser()
    if not image_path.is_absolute():
        image_path = base / image_path
    prompt = ""
    if prompt_field is not None:
        prompt = _as_text(
            _required(row, prompt_field, "data.prompt_field"), row.where, prompt_field
        )
    references: list[str] = []
    if require_text or rec.get(text_field) is not None:
        raw = _required(row, text_field, "data.text_field")
        if isinstance(raw, list):
            if not raw:
                raise DataError(f"{row.where}: field {text_field!r} is an empty list")
            references = [_as_text(r, row.where, text_field) for r in raw]
        else:
            references = [_as_text(raw, row.where, text_field, "a string or a list of strings")]
    ident = rec.get(id_field)
    return VisionExample(
        id=row.default_id if ident is None or ident == "" else str(ident),
        image_path=str(image_path),
        text=prompt,
        target=references[0] if references else None,
        references=references,
    )


# ----------------------------------------------------------------------------- dispatcher

_FOLDER_KEYS = ("check_images", "max_pixels")
_PAIR_KEYS = (
    "image_field", "text_field", "prompt_field", "id_field", "require_text", *_FOLDER_KEYS
)  # fmt: skip
_VQA_KEYS = ("annotations_path", "image_dir", "image_pattern", "image_split", *_FOLDER_KEYS)
_VISION_TASKS = ("classify", "caption", "vqa")
_UNSUPPORTED_FILE = (
    "unsupported image data file; use a folder of class folders, a .json / a .jsonl of "
    "image-text pairs, a VQAv2 questions .json or builtin:easy-vqa"
)


def load_vision_examples(
    path: str,
    *,
    task_type: str,
    split: str = "train",
    strict: bool = False,
    **fields: Any,
) -> tuple[list[VisionExample], dict[str, Any]]:
    """Read any supported image source for a task.

    Sources:
        * ``builtin:easy-vqa`` (vqa), with an optional ``/train`` or ``/test`` suffix that
          overrides `split`. easy-vqa has only train and test splits, so ``val`` /
          ``validation`` / ``dev`` read the test split.
        * a directory (classify): class folders, see `load_image_folder`.
        * a ``.json`` holding a VQAv2 questions object (vqa), see `load_vqa`. Without an
          ``annotations_path`` field, the annotations are looked for next to it (the name
          with ``questions`` -> ``annotations``, also the official ``v2_mscoco_*`` name).
        * any other ``.json`` / ``.jsonl`` (caption, vqa): image-text pairs, see
          `load_image_text_pairs`. For vqa the defaults are ``prompt_field="question"``
          and ``text_field="answer"``.

    Args:
        path: the source spec.
        task_type: ``"classify"``, ``"caption"`` or ``"vqa"``.
        split: dataset split for built-ins (``train``, ``test``, ``val``).
        strict: raise on the first unusable image instead of skipping it.
        **fields: reader options: ``image_field``, ``text_field``, ``prompt_field``,
            ``id_field``, ``require_text`` (pairs); ``annotations_path``, ``image_dir``,
            ``image_pattern``, ``image_split`` (VQAv2's image split, e.g. ``val2014``);
            ``check_images``, ``max_pixels`` (all). Options another reader uses are ignored.

    Returns:
        ``(examples, info)``; info holds ``"skipped"`` (a `LoadReport`), ``"source"``
        (``image_folder``, ``pairs``, ``vqav2`` or ``easy-vqa``), and ``"classes"`` for
        folders or ``"answers"`` for easy-vqa.

    Raises:
        DataError: the source is missing, unusable for `task_type`, or malformed.
        TypeError: an option no reader knows.
    """
    _check_request(path, task_type, fields)
    if path.startswith("builtin:"):
        return _load_builtin(path, task_type, split)
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: not found (looked for {looked_for(p)})")
    if p.is_dir():
        _need_task(path, task_type, ("classify",), "a folder of class folders")
        return _load_folder(p, strict, fields)
    if p.suffix.lower() not in (".json", ".jsonl"):
        raise DataError(f"{path}: {_UNSUPPORTED_FILE}")
    if p.suffix.lower() == ".json" and is_vqa_questions(p):
        _need_task(path, task_type, ("vqa",), "a VQAv2 questions file")
        return _load_vqav2(p, strict, fields)
    _need_task(path, task_type, ("caption", "vqa"), "an image-text pairs file")
    return _load_pairs(p, task_type, strict, fields)


def _check_request(path: str, task_type: str, fields: dict[str, Any]) -> None:
    unknown = set(fields) - set(_PAIR_KEYS) - set(_VQA_KEYS)
    if unknown:
        raise TypeError(f"unknown vision data option(s): {', '.join(sorted(unknown))}")
    if task_type not in _VISION_TASKS:
        raise DataError(
            f"{path}: task type {task_type!r} has no image data; image sources serve "
            f"{', '.join(_VISION_TASKS)} (text-to-text data is read by load_text_examples)"
        )


def _load_folder(
    root: Path, strict: bool, fields: dict[str, Any]
) -> tuple[list[VisionExample], dict[str, Any]]:
    examples, classes, report = load_image_folder(
        root, strict=strict, **_pick(fields, _FOLDER_KEYS)
    )
    return examples, {"source": "image_folder", "classes": classes, "skipped": report}


def _load_vqav2(
    questions: Path, strict: bool, fields: dict[str, Any]
) -> tuple[list[VisionExample], dict[str, Any]]:
    """A VQAv2 questions file, its annotations found beside it unless given."""
    opts = _pick(fields, _VQA_KEYS)
    if "image_split" in opts:
        opts["split"] = opts.pop("image_split")
    report_note = None
    if opts.get("annotations_path") is None:
        opts["annotations_path"], report_note = annotations_path_for(questions)
    examples, report = load_vqa(questions, strict=strict, **opts)
    if report_note:
        report.warn(report_note)
    return examples, {"source": "vqav2", "skipped": report}


def _load_pairs(
    pairs: Path, task_type: str, strict: bool, fields: dict[str, Any]
) -> tuple[list[VisionExample], dict[str, Any]]:
    """An image-text pairs file; for vqa the question and answer fields by default."""
    opts = _pick(fields, _PAIR_KEYS)
    if task_type == "vqa":
        opts.setdefault("prompt_field", "question")
        opts.setdefault("text_field", "answer")
    examples, report = load_image_text_pairs(pairs, strict=strict, **opts)
    return examples, {"source": "pairs", "skipped": report}


def _load_builtin(spec: str, task_type: str, split: str) -> tuple[list[VisionExample], dict]:
    name, _, arg = spec.removeprefix("builtin:").partition("/")
    if name.replace("_", "-").lower() != EASY_VQA_SPEC.removeprefix("builtin:"):
        raise DataError(f"{spec}: unknown builtin image dataset {name!r}; available: easy-vqa")
    _need_task(spec, task_type, ("vqa",), "easy-vqa (a VQA dataset)")
    chosen = easy_vqa_split(arg or split, spec)
    info = {"source": "easy-vqa", "answers": easy_vqa_answers(), "skipped": LoadReport()}
    return load_easy_vqa(chosen), info


def _need_task(path: str, task_type: str, allowed: tuple[str, ...], what: str) -> None:
    if task_type not in allowed:
        raise DataError(
            f"{path}: is {what}, which serves task type {' or '.join(allowed)}, "
            f"not {task_type!r}; check task.type and the data path"
        )


def _pick(fields: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if k in keys}
