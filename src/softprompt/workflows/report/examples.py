"""Which examples a page shows, image thumbnails, and accuracy by answer type.

A page shows at most `MAX_EXAMPLES` rows however large the evaluation: first the
examples whose answer changed (fixed, then broken, then other changes), then a seeded
random sample of the unchanged ones; the full records stay in predictions.<split>.jsonl.
"""

from __future__ import annotations

import base64
import io
import random
from collections import Counter
from pathlib import Path
from typing import Any

from softprompt.workflows.report.data import Pair

MAX_EXAMPLES = 200
MAX_PANELS = 12
THUMBNAIL_PX = 96
SAMPLE_SEED = 0
_ORDER = {"fixed": 0, "broken": 1, "changed": 2, "same": 3}
MAX_ANSWER_GROUPS = 12


def select_examples(
    pairs: list[Pair], limit: int = MAX_EXAMPLES, seed: int = SAMPLE_SEED
) -> list[Pair]:
    """At most `limit` pairs: changed ones first, then a seeded sample; in file order.

    Args:
        pairs: every example of the split.
        limit: the page's cap.
        seed: the sample's seed (the same page for the same files).
    """
    changed = sorted((p for p in pairs if p.status != "same"), key=lambda p: _ORDER[p.status])
    chosen = changed[:limit]
    rest = [p for p in pairs if p.status == "same"]
    room = limit - len(chosen)
    if room > 0:
        chosen += random.Random(seed).sample(rest, min(room, len(rest)))
    return sorted(chosen, key=lambda p: p.index)


def panel_examples(pairs: list[Pair], limit: int = MAX_PANELS) -> list[Pair]:
    """Examples for the side-by-side image grid: fixed, then broken, then the rest.

    One panel per image first (VQA sets ask several questions about one image), then
    further questions about images already shown.
    """
    with_image = [p for p in pairs if p.tuned.get("image")]
    ordered = sorted(with_image, key=lambda p: (_ORDER[p.status], p.index))
    seen: set[str] = set()
    first, again = [], []
    for pair in ordered:
        image = str(pair.tuned["image"])
        (again if image in seen else first).append(pair)
        seen.add(image)
    return (first + again)[:limit]


def resolve_image(path: str | None, run_dir: Path) -> Path | None:
    """An image path of a record: as written (absolute or from the working directory),
    else relative to the run directory's parent; None when not found."""
    if not path:
        return None
    for candidate in (Path(path), run_dir.parent / path):
        if candidate.is_file():
            return candidate
    return None


class Thumbnails:
    """Small JPEG thumbnails as data URIs, made once per image file.

    Attributes:
        size: longest side in pixels.
    """

    def __init__(self, run_dir: Path, size: int = THUMBNAIL_PX) -> None:
        self.run_dir, self.size = run_dir, size
        self._cache: dict[str, str | None] = {}

    def data_uri(self, path: str | None) -> str | None:
        """`data:image/jpeg;base64,...` of the image at `path` (None if unreadable)."""
        if not path:
            return None
        if path not in self._cache:
            self._cache[path] = self._make(path)
        return self._cache[path]

    def _make(self, path: str) -> str | None:
        from PIL import Image, UnidentifiedImageError

        found = resolve_image(path, self.run_dir)
        if found is None:
            return None
        try:
            with Image.open(found) as image:
                image = image.convert("RGB")
                image.thumbnail((self.size, self.size))
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=80)
        except (OSError, UnidentifiedImageError, ValueError):
            return None  # the records keep an unreadable image's path; the page shows none
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def easy_vqa_question_type(question: str) -> str:
    """easy-VQA's question kinds: shape, colour, yes/no, negated yes/no."""
    q = question.lower()
    if q.startswith("what"):
        return "colour" if "color" in q or "colour" in q else "shape"
    return "negated yes/no" if " not " in q or q.startswith("is no ") else "yes/no"


def answer_groups(pairs: list[Pair]) -> tuple[str, dict[str, list[Pair]]]:
    """Examples grouped by answer type, for accuracy by type.

    Records with an `answer_type` field (VQAv2 annotations carry one) are grouped by it;
    easy-VQA questions (ids `easy-vqa/...`) by question kind; any other set by its
    reference answer (the most frequent answers, the rest together).

    Returns:
        (what the groups are, group name -> pairs).
    """
    labelled = [p for p in pairs if p.tuned_ok is not None]
    if labelled and all(p.tuned.get("answer_type") for p in labelled):
        return "answer type", _group(labelled, lambda p: str(p.tuned["answer_type"]))
    if labelled and all(str(p.tuned.get("id", "")).startswith("easy-vqa/") for p in labelled):
        return "question type", _group(
            labelled, lambda p: easy_vqa_question_type(str(p.tuned.get("question", "")))
        )
    frequent = Counter(p.reference for p in labelled).most_common(MAX_ANSWER_GROUPS)
    keep = {answer for answer, _ in frequent}
    groups = _group(labelled, lambda p: p.reference if p.reference in keep else "(other answers)")
    return "reference answer", groups


def _group(pairs: list[Pair], key) -> dict[str, list[Pair]]:
    groups: dict[str, list[Pair]] = {}
    for pair in pairs:
        groups.setdefault(key(pair), []).append(pair)
    return dict(sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])))


def accuracy_by_group(groups: dict[str, list[Pair]]) -> list[dict[str, Any]]:
    """Rows {group, count, baseline, tuned} with accuracies in percent (None: no baseline)."""
    rows = []
    for name, members in groups.items():
        with_base = [p for p in members if p.baseline_ok is not None]
        rows.append(
            {
                "group": name,
                "count": len(members),
                "tuned": 100.0 * sum(bool(p.tuned_ok) for p in members) / len(members),
                "baseline": (
                    100.0 * sum(bool(p.baseline_ok) for p in with_base) / len(with_base)
                    if with_base
                    else None
                ),
            }
        )
    return rows
