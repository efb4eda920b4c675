"""What the image readers skipped and why, and the per-image check they share.

A dataset of 50,000 photos with three broken files should still train; the readers skip
those three and list them in a `LoadReport` the caller can print, instead of failing
the run. ``strict=True`` turns the first bad image into an error instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from softprompt.data.errors import looked_for
from softprompt.data.images import MAX_IMAGE_PIXELS, ImageError, load_image

logger = logging.getLogger(__name__)


@dataclass
class LoadReport:
    """Inputs a reader skipped, and warnings about the data as a whole.

    Attributes:
        skipped: one entry per skipped image: ``{"path": ..., "error": ...}``, plus
            ``"where"`` (``"file:line"`` or ``"file: questions[i]"``) for record-based
            readers. An image used by several records is listed once.
        warnings: problems that did not stop loading (an empty class folder, a
            one-class dataset, no VQA annotations found).
        examples_skipped: how many records were dropped because of the skipped images.
    """

    skipped: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    examples_skipped: int = 0

    @property
    def count(self) -> int:
        """Number of skipped images."""
        return len(self.skipped)

    def add(self, path: str, error: str, where: str | None = None) -> None:
        """Record a skipped image."""
        entry = {"path": path, "error": error}
        if where is not None:
            entry["where"] = where
        self.skipped.append(entry)

    def warn(self, message: str) -> None:
        """Record a warning and log it, so it is seen even if the caller ignores the report."""
        self.warnings.append(message)
        logger.warning("%s", message)

    def summary(self, limit: int = 5) -> str:
        """One human-readable paragraph: counts, the first `limit` errors, the warnings."""
        lines = []
        if self.skipped:
            lines.append(
                f"skipped {self.count} image(s) ({self.examples_skipped} example(s)); first:"
            )
            lines.extend(f"  {s['error']}" for s in self.skipped[:limit])
            if self.count > limit:
                lines.append(f"  ... and {self.count - limit} more")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines) if lines else "nothing skipped"


class ImageChecker:
    """Decides whether each image is usable, once per path, and fills a `LoadReport`.

    Args:
        report: where skipped images go.
        strict: raise on the first unusable image instead of skipping it.
        check_images: decode every image fully (catches truncated and corrupt files);
            False only checks that the file exists, for large trusted datasets.
        max_pixels: the decompression-bomb limit passed to `load_image`.
    """

    def __init__(
        self,
        report: LoadReport,
        *,
        strict: bool = False,
        check_images: bool = True,
        max_pixels: int | None = MAX_IMAGE_PIXELS,
    ) -> None:
        self.report = report
        self.strict = strict
        self.check_images = check_images
        self.max_pixels = max_pixels
        # VQA has several questions per image; decode each image once.
        self._errors: dict[str, str | None] = {}

    def usable(self, path: str, where: str | None = None) -> bool:
        """True if the image at `path` can be used; otherwise report it (or raise).

        Args:
            path: the image file.
            where: the record's location, for messages (``"file:line"``).

        Raises:
            ImageError: the image is unusable and the checker is strict.
        """
        if path in self._errors:
            error = self._errors[path]
            reported = True
        else:
            error = self._check(path)
            self._errors[path] = error
            reported = False
        if error is None:
            return True
        if self.strict:
            raise ImageError(f"{where}: {error}" if where is not None else error)
        if not reported:
            self.report.add(path, error, where)
        self.report.examples_skipped += 1
        return False

    def _check(self, path: str) -> str | None:
        if self.check_images:
            try:
                load_image(path, max_pixels=self.max_pixels)
            except ImageError as e:
                return str(e)
            return None
        p = Path(path)
        if not p.is_file():
            return f"{path}: image file not found (looked for {looked_for(p)})"
        return None
