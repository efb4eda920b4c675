"""Visual question answering readers: VQAv2 JSON files and the easy-vqa package.

VQAv2 ships questions and annotations as two JSON objects, each holding one long list,
usually on a single line; error messages therefore locate a bad entry by its list index
(``questions.json: questions[17]``) rather than by line.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from pathlib import Path
from typing import Any

from softprompt.data.errors import DataError, check_encodable, fields_present
from softprompt.data.images import MAX_IMAGE_PIXELS
from softprompt.data.load_report import ImageChecker, LoadReport
from softprompt.data.record_files import _json_problem, _read_text
from softprompt.data.records import VisionExample
from softprompt.data.text import UniqueIds

VQA_IMAGE_PATTERN = "COCO_{split}_{image_id:012d}.jpg"
"""COCO's image file names, e.g. ``COCO_train2014_000000000009.jpg``."""

EASY_VQA_SPEC = "builtin:easy-vqa"
# easy-vqa has only train and test; the validation names read test (see load_easy_vqa).
_EASY_VQA_SPLITS = {
    "train": "train",
    "training": "train",
    "test": "test",
    "val": "test",
    "valid": "test",
    "validation": "test",
    "dev": "test",
}
_PATTERN_FIELDS = ("split", "image_id", "question_id")


# ----------------------------------------------------------------------------- VQAv2


def load_vqa(
    questions_path: str | Path,
    annotations_path: str | Path | None = None,
    *,
    image_dir: str | Path | None = None,
    image_pattern: str = VQA_IMAGE_PATTERN,
    split: str | None = None,
    strict: bool = False,
    check_images: bool = True,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
) -> tuple[list[VisionExample], LoadReport]:
    """Read VQAv2 questions (and, for training/evaluation, annotations).

    Questions: ``{"data_subtype": "train2014", "questions": [{"image_id", "question",
    "question_id"}, ...]}``. Annotations: ``{"annotations": [{"question_id", "image_id",
    "answers": [{"answer": ...}, ...], "multiple_choice_answer"}, ...]}``.

    Args:
        questions_path: the questions JSON file.
        annotations_path: the annotations JSON file; None gives prediction inputs
            (``target`` None, no references).
        image_dir: folder holding the images; None means the questions file's folder.
        image_pattern: image file name inside `image_dir`; fields ``{split}``,
            ``{image_id}``, ``{question_id}``.
        split: the value of ``{split}`` (e.g. ``"val2014"``); None takes the questions
            file's ``data_subtype``.
        strict: raise on the first unusable image instead of skipping it.
        check_images: decode every image once; False only checks that files exist.
        max_pixels: decompression-bomb limit per image (see `load_image`).

    Returns:
        ``(examples, report)`` in question order: ``id`` the question id, ``text`` the
        question, ``target`` the ``multiple_choice_answer`` (else the most common answer),
        ``references`` all answers (ten in VQAv2, duplicates kept: the VQA metric
        counts them).

    Raises:
        DataError: a file is missing or malformed, an entry lacks a field, a question has
            no annotation, or the image pattern cannot be filled.
        ImageError: with `strict`, the first unusable image.
    """
    questions, split, answers = _read_vqa_files(
        questions_path, annotations_path, image_pattern, split
    )
    root = Path(image_dir) if image_dir is not None else Path(questions_path).parent
    report = LoadReport()
    checker = ImageChecker(report, strict=strict, check_images=check_images, max_pixels=max_pixels)
    examples = _question_examples(
        questions_path, questions, answers, annotations_path, root, image_pattern, split, checker
    )
    if not examples:
        raise DataError(
            f"{questions_path}: none of the {len(questions)} questions has a usable image "
            f"(image_dir {root}, pattern {image_pattern!r}); {report.summary()}"
        )
    return examples, report


def _read_vqa_files(
    questions_path: str | Path,
    annotations_path: str | Path | None,
    image_pattern: str,
    split: str | None,
) -> tuple[list, str | None, dict[Any, tuple[str, list[str]]] | None]:
    """(question entries, the split filling the pattern, answers by question id or None)."""
    qdoc = _read_json_object(questions_path, "questions")
    if split is None and isinstance(qdoc.get("data_subtype"), str):
        split = qdoc["data_subtype"]
    answers = _read_annotations(annotations_path) if annotations_path is not None else None
    _check_pattern(image_pattern, split, questions_path)
    if not qdoc["questions"]:
        raise DataError(f"{questions_path}: the 'questions' list is empty")
    return qdoc["questions"], split, answers


def _question_examples(
    questions_path: str | Path,
    questions: list,
    answers: dict[Any, tuple[str, list[str]]] | None,
    annotations_path: str | Path | None,
    root: Path,
    image_pattern: str,
    split: str | None,
    checker: ImageChecker,
) -> list[VisionExample]:
    """The questions whose image is usable, in order, with their answers when known."""
    examples: list[VisionExample] = []
    ids = UniqueIds("question_id", fix="Each question needs its own question_id")
    for i, q in enumerate(questions):
        loc = f"{questions_path}: questions[{i}]"
        _require_fields(q, ("image_id", "question", "question_id"), loc)
        qid = q["question_id"]
        ids.add(str(qid), loc)
        target, references = None, []
        if answers is not None:
            if qid not in answers:
                raise DataError(
                    f"{loc}: question_id {qid} has no entry in {annotations_path}; "
                    "are the questions and annotations files of the same split?"
                )
            target, references = answers[qid]
        image = root / _fill_pattern(image_pattern, split, q["image_id"], qid, loc)
        if checker.usable(str(image), loc):
            examples.append(
                VisionExample(
                    id=str(qid),
                    image_path=str(image),
                    text=check_encodable(str(q["question"]), loc, "question"),
                    target=target,
                    references=references,
                )
            )
    return examples


def is_vqa_questions(path: str | Path) -> bool:
    """True if `path` is a VQAv2 questions file (a JSON object with a ``questions`` list)."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            head = f.read(1 << 20)
    except OSError:
        return False
    # Cheap rejections first: pair files are arrays or JSON Lines without that key.
    if not head.lstrip().startswith("{") or not re.search(r'"questions"\s*:\s*\[', head):
        return False
    try:
        doc = json.loads(_read_text(path))
    except (ValueError, RecursionError, DataError):
        return False  # e.g. JSON Lines whose records carry a "questions" field
    return isinstance(doc, dict) and isinstance(doc.get("questions"), list)


def annotations_path_for(questions_path: str | Path) -> tuple[Path | None, str | None]:
    """Find the annotations file beside a questions file.

    Tries the name with ``questions`` -> ``annotations``, then the official VQAv2 name
    (``v2_OpenEnded_mscoco_val2014_questions.json`` -> ``v2_mscoco_val2014_annotations.json``).

    Returns:
        ``(path, None)`` if found, else ``(None, note)`` with a note for the report.
    """
    p = Path(questions_path)
    candidates: list[Path] = []
    if "questions" in p.name:
        renamed = p.name.replace("questions", "annotations")
        candidates.append(p.with_name(renamed))
        official = re.sub(r"_(OpenEnded|MultipleChoice)_", "_", renamed)
        if official != renamed:
            candidates.append(p.with_name(official))
    for c in candidates:
        if c.is_file():
            return c, None
    looked = f" (looked for {', '.join(c.name for c in candidates)})" if candidates else ""
    return None, (
        f"{questions_path}: no annotations file found{looked}; examples have no answers "
        "(prediction only); pass annotations_path to train or evaluate"
    )


def _read_json_object(path: str | Path, key: str) -> dict[str, Any]:
    text = _read_text(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from e
    except (ValueError, RecursionError) as e:
        raise DataError(f"{path}: malformed JSON ({_json_problem(e)})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        present = fields_present(doc) if isinstance(doc, dict) else f"a {type(doc).__name__}"
        raise DataError(
            f"{path}: expected a VQAv2 {key} file, a JSON object with a {key!r} list "
            f"(fields present: {present})"
        )
    return doc


def _read_annotations(path: str | Path) -> dict[Any, tuple[str, list[str]]]:
    by_question: dict[Any, tuple[str, list[str]]] = {}
    for j, ann in enumerate(_read_json_object(path, "annotations")["annotations"]):
        loc = f"{path}: annotations[{j}]"
        _require_fields(ann, ("question_id", "answers"), loc)
        raw = ann["answers"]
        if not isinstance(raw, list) or not all(isinstance(a, dict) and "answer" in a for a in raw):
            raise DataError(f"{loc}: 'answers' must be a list of {{\"answer\": ...}} objects")
        references = [check_encodable(str(a["answer"]), loc, "answers") for a in raw]
        target = ann.get("multiple_choice_answer")
        if target is None:
            if not references:
                raise DataError(f"{loc}: no 'multiple_choice_answer' and an empty 'answers' list")
            # The consensus answer is what VQAv2's multiple_choice_answer holds anyway.
            target = Counter(references).most_common(1)[0][0]
        by_question[ann["question_id"]] = (str(target), references)
    return by_question


def _require_fields(entry: Any, names: tuple[str, ...], loc: str) -> None:
    if not isinstance(entry, dict):
        raise DataError(f"{loc}: expected a JSON object, got {type(entry).__name__}")
    for name in names:
        if entry.get(name) is None:
            raise DataError(
                f"{loc}: missing field {name!r} (fields present: {fields_present(entry)})"
            )


def _check_pattern(pattern: str, split: str | None, source: str | Path) -> None:
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None}
    except ValueError as e:
        raise DataError(f"image_pattern {pattern!r}: {e}") from e
    unknown = {n.split(".")[0].split("[")[0] for n in names} - set(_PATTERN_FIELDS)
    if unknown:
        raise DataError(
            f"image_pattern {pattern!r}: unknown field(s) {', '.join(sorted(unknown))}; "
            f"available: {', '.join(_PATTERN_FIELDS)}"
        )
    if "split" in names and split is None:
        raise DataError(
            f"{source}: image_pattern {pattern!r} needs the split, and the questions file "
            "has no 'data_subtype'; pass split, e.g. 'val2014'"
        )


def _fill_pattern(pattern: str, split: str | None, image_id: Any, qid: Any, loc: str) -> str:
    # Ids sometimes arrive as strings ("9"); the COCO pattern zero-pads an integer.
    if isinstance(image_id, str) and image_id.isdigit():
        image_id = int(image_id)
    try:
        return pattern.format(split=split, image_id=image_id, question_id=qid)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        raise DataError(
            f"{loc}: image_pattern {pattern!r} cannot be filled with image_id {image_id!r}: {e}"
        ) from e


# ----------------------------------------------------------------------------- easy-vqa


def easy_vqa_split(split: str, source: str = EASY_VQA_SPEC) -> str:
    """Map a split name to easy-vqa's ``train`` or ``test`` (val/validation/dev -> test).

    Raises:
        DataError: an unknown split name.
    """
    chosen = _EASY_VQA_SPLITS.get(split.lower())
    if chosen is None:
        raise DataError(
            f"{source}: no split {split!r}; easy-vqa has train and test "
            "(val / validation / dev read test)"
        )
    return chosen


def load_easy_vqa(split: str = "train") -> list[VisionExample]:
    """Read easy-vqa (64x64 rendered shapes, 13 one-word answers) from the installed package.

    easy-vqa has only train (38,575 questions, 4,000 images) and test (9,673 questions,
    1,000 images) splits; ``val`` / ``validation`` / ``dev`` read the test split.

    Args:
        split: ``train`` or ``test`` (or a validation alias).

    Returns:
        Examples in the package's order: ``id`` ``"easy-vqa/<split>:<index>"``, ``text``
        the question, ``target`` the answer, ``references`` ``[answer]``.

    Raises:
        DataError: the package is missing, the split is unknown, or a question names an
            image the package lacks.
    """
    chosen = easy_vqa_split(split)
    easy_vqa = _import_easy_vqa()
    if chosen == "train":
        questions, answers, image_ids = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
    else:
        questions, answers, image_ids = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
    # The package returns three parallel lists and a dict {int image id: absolute path}.
    examples = []
    for i, (question, answer, image_id) in enumerate(
        zip(questions, answers, image_ids, strict=True)
    ):
        image = paths.get(image_id)
        if image is None:
            raise DataError(
                f"{EASY_VQA_SPEC}/{chosen}: question {i} names image {image_id}, which the "
                "installed package lacks; reinstall easy-vqa"
            )
        examples.append(
            VisionExample(
                id=f"easy-vqa/{chosen}:{i}",
                image_path=str(image),
                text=question,
                target=answer,
                references=[answer],
            )
        )
    return examples


def easy_vqa_answers() -> list[str]:
    """The 13 possible easy-vqa answers, in the package's order."""
    return list(_import_easy_vqa().get_answers())


def _import_easy_vqa() -> Any:
    try:
        import easy_vqa
    except ModuleNotFoundError as e:
        raise DataError(
            f"{EASY_VQA_SPEC}: needs the easy-vqa package (pip install --no-deps easy-vqa==1.0)"
        ) from e
    return easy_vqa
