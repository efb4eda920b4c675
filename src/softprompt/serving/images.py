"""Images that clients send as bytes, kept where the image backbones read them.

Image backbones read images from files (and cache their features by content hash), so a
request's image bytes are written once to a private spool directory, under their content
hash, checked with the same reader training uses (`softprompt.data.images.load_image`: the
pixel limit applies before decoding), and removed when no waiting request needs them and
the spool holds more than `keep` files. Clients never name a path the server reads.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import tempfile
import threading
from pathlib import Path

from softprompt.data.images import MAX_IMAGE_PIXELS, load_image
from softprompt.errors import UserError


class BadImage(UserError):
    """An image that cannot be read (bad base64 or data URI, not an image, too large)."""


def decode_data(value: str) -> bytes:
    """The bytes of a `data:` URI or of plain base64.

    Raises:
        BadImage: not base64, or a URI that is not `data:...;base64,...`.
    """
    if value.startswith("data:"):
        head, _, payload = value.partition(",")
        if not head.endswith(";base64") or not payload:
            raise BadImage("image_url must be a data URI: data:image/...;base64,<bytes>")
        value = payload
    elif value.startswith(("http://", "https://", "file:", "/")):
        raise BadImage("images are sent as bytes (a data: URI or base64), not as URLs or paths")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadImage("image is not valid base64") from None


class ImageSpool:
    """Content-addressed image files with reference counts (see the module docstring)."""

    def __init__(self, max_pixels: int | None = MAX_IMAGE_PIXELS, keep: int = 256) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="softprompt-serve-"))
        self.max_pixels = max_pixels
        self.keep = keep
        self._refs: dict[Path, int] = {}
        self._lock = threading.Lock()

    def add(self, data: bytes) -> str:
        """The path of a checked image file holding `data`; `release` it when answered.

        Raises:
            BadImage: empty, not an image, corrupt, or over the pixel limit.
        """
        if not data:
            raise BadImage("image is empty")
        path = self.root / hashlib.sha256(data).hexdigest()
        with self._lock:
            if path not in self._refs:
                scratch = path.with_suffix(".part")
                scratch.write_bytes(data)
                os.replace(scratch, path)
            self._refs[path] = self._refs.get(path, 0) + 1
        try:
            load_image(path, max_pixels=self.max_pixels)
        except UserError as err:
            self.release(str(path))
            raise BadImage(f"image: {str(err).replace(str(path), 'the image')}") from None
        return str(path)

    def release(self, path: str) -> None:
        with self._lock:
            key = Path(path)
            self._refs[key] = self._refs.get(key, 1) - 1
            unused = [p for p, n in self._refs.items() if n <= 0]
            for stale in unused[: max(0, len(self._refs) - self.keep)]:
                stale.unlink(missing_ok=True)
                del self._refs[stale]

    def close(self) -> None:
        for path in self.root.iterdir():
            path.unlink(missing_ok=True)
        self.root.rmdir()
