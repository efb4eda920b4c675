"""Robust image loading: any common file becomes an upright RGB `PIL.Image.Image`.

Real image collections hold grayscale scans, 16-bit PNGs, palette GIF-style PNGs with
transparency, CMYK JPEGs from print workflows, phone photos stored sideways with an EXIF
orientation tag, half-downloaded files and the odd HTML page saved as ``.jpg``.
`load_image` turns every readable one into the same thing (RGB, upright, alpha flattened
on white) and every unreadable one into an `ImageError` that names the file and says what
is wrong with it, so a reader can report it and move on.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from softprompt.data.errors import DataError, looked_for

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
"""File name endings the folder readers treat as images (compared case-insensitively)."""

MAX_IMAGE_PIXELS: int = 89_478_485
"""Default pixel limit (width * height), Pillow's own default: about 89.5 million pixels,
e.g. 9,460 x 9,460. Larger files are refused as possible decompression bombs."""

# Pillow's 16-bit grayscale modes (byte order variants); scaled down to 8 bits, not clipped.
_MODES_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")
# Modes with an alpha band (premultiplied variants included); flattened onto white.
_ALPHA_MODES = ("LA", "PA", "RGBA", "La", "RGBa")
# Errors Pillow's decoders raise for broken or truncated data (PNG raises SyntaxError for
# bad chunks, some plugins struct.error / zlib.error / EOFError on short reads).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)
# Errors a malformed EXIF block can raise; the picture itself is still usable then.
_EXIF_ERRORS = (OSError, SyntaxError, ValueError, KeyError, TypeError, struct.error)
_PIL_LIMIT_LOCK = threading.Lock()


class ImageError(DataError):
    """An image file is missing, unreadable, corrupt, not an image or too large."""


def load_image(
    path: str | os.PathLike[str], *, max_pixels: int | None = MAX_IMAGE_PIXELS
) -> Image.Image:
    """Read an image file fully and return it upright, in RGB.

    Conversions: grayscale (``1``, ``L``, 16-bit ``I;16`` PNGs, 32-bit ``I``, float ``F``),
    palette (``P``, with or without transparency), ``CMYK`` and ``YCbCr`` become RGB;
    images with alpha (``LA``, ``RGBA``, ``PA``, palette/grayscale/RGB with a transparent
    colour) are composited on white. The EXIF orientation tag is applied, so a phone photo
    stored sideways comes out the way it was taken.

    16-bit values are scaled to 8 bits (65535 -> 255). ``I`` images already in 0..255 are
    kept, wider ones are read as 16-bit; ``F`` images in 0..1 are scaled by 255, others
    clipped to 0..255.

    Args:
        path: the image file.
        max_pixels: refuse images with more than this many pixels (width * height), checked
            from the header before any pixel data is decoded; None disables the check.

    Returns:
        A new RGB image, fully decoded and detached from the file.

    Raises:
        ImageError: the file is missing, empty, unreadable, not an image, truncated or
            corrupt, in an unsupported mode, or over `max_pixels`.
    """
    p = Path(path)
    _check_file(p)
    try:
        # Pillow warns above its own global limit; our `max_pixels` is the one that decides.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # "Corrupt EXIF data" names no file, and a broken EXIF block costs nothing here.
            warnings.filterwarnings("ignore", "Corrupt EXIF data", UserWarning)
            try:
                return _decode(p, max_pixels)
            except Image.DecompressionBombError:
                # Pillow's hard limit (twice its global) fired before we saw the size. Look
                # again with it lifted so `max_pixels` decides, both ways.
                with _pillow_limit_lifted():
                    return _decode(p, max_pixels)
    except ImageError:
        raise
    except PermissionError as e:
        raise ImageError(f"{path}: permission denied; make the file readable") from e
    except UnidentifiedImageError as e:
        raise ImageError(
            f"{path}: not an image (Pillow cannot identify the file{_content_hint(p)}); "
            "remove it or replace it with a real image"
        ) from e
    except _DECODE_ERRORS as e:
        raise ImageError(
            f"{path}: truncated or corrupt image data ({type(e).__name__}: {e}); "
            "re-download or re-export the file"
        ) from e


def image_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, hex; the feature cache's key for an image.

    Args:
        path: the image file.

    Returns:
        64 lowercase hex digits.

    Raises:
        ImageError: the file is missing or unreadable.
    """
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except FileNotFoundError as e:
        raise ImageError(f"{path}: image file not found (looked for {looked_for(path)})") from e
    except PermissionError as e:
        raise ImageError(f"{path}: permission denied; make the file readable") from e
    except IsADirectoryError as e:
        raise ImageError(f"{path}: is a directory, not an image file") from e
    except (OSError, ValueError) as e:  # a name too long or holding a NUL byte, an I/O error
        reason = getattr(e, "strerror", None) or e
        raise ImageError(f"{_short(Path(path))!r}: cannot read the file ({reason})") from e
    return h.hexdigest()


# ----------------------------------------------------------------------------- internals


def _check_file(p: Path) -> None:
    # Checked up front so the common mistakes get a plain message, not a decoder's.
    if "\x00" in str(p):
        raise ImageError(f"{str(p)!r}: the path contains a NUL byte; no file has such a name")
    try:
        st = p.stat()
    except FileNotFoundError as e:
        raise ImageError(f"{p}: image file not found (looked for {looked_for(p)})") from e
    except PermissionError as e:
        raise ImageError(f"{p}: permission denied (cannot look into its folder)") from e
    except OSError as e:  # a name too long, a symlink loop, an I/O error
        raise ImageError(f"{_short(p)}: cannot read the file ({e.strerror})") from e
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(f"{p}: is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        # A FIFO would block forever, a device never ends.
        raise ImageError(f"{p}: not a regular file (a device, pipe or socket)")
    if st.st_size == 0:
        raise ImageError(f"{p}: file is empty (0 bytes); the download or copy did not finish")


def _short(p: Path) -> str:
    text = str(p)
    return text if len(text) <= 200 else f"{text[:100]}...{text[-60:]} ({len(text)} characters)"


def _decode(p: Path, max_pixels: int | None) -> Image.Image:
    with Image.open(p) as img:
        width, height = img.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageError(
                f"{p}: image is {width}x{height} = {width * height:,} pixels, over the limit of "
                f"{max_pixels:,} (a guard against decompression bombs); if the image is genuine, "
                "raise the limit with max_pixels=N (None disables the check)"
            )
        img.load()  # forces a full decode, so truncated data fails here and not in training
        try:
            upright = ImageOps.exif_transpose(img)
        except _EXIF_ERRORS:
            upright = img.copy()  # a broken EXIF block should not cost the picture
        return _to_rgb(upright, p)


def _to_rgb(img: Image.Image, p: Path) -> Image.Image:
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in _MODES_16BIT or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img), mode)).convert("RGB")
    if "transparency" in img.info and mode in ("P", "L", "RGB", "1"):
        # A transparent colour key (tRNS chunk / GIF-style palette entry) is alpha too.
        img = img.convert("RGBA")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as e:
        raise ImageError(f"{p}: cannot convert image mode {mode!r} to RGB ({e})") from e


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    if mode == "F":
        values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        # Float images are usually normalised to 0..1; anything wider is taken as 0..255.
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    values = arr.astype(np.int64)
    if mode == "I" and values.size and values.min() >= 0 and values.max() <= 255:
        return values.astype(np.uint8)
    # 16-bit range: 65535 / 257 = 255 exactly, so white stays white.
    return np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)


@contextmanager
def _pillow_limit_lifted() -> Iterator[None]:
    # Pillow's limit is a module global; the lock keeps our own concurrent loads from
    # restoring it out of order. Only used after Pillow refused a file, so it is rare.
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _content_hint(p: Path) -> str:
    # Saying "it is text/HTML" turns a puzzling decoder error into an obvious fix.
    try:
        with open(p, "rb") as f:
            head = f.read(64)
    except OSError:
        return ""
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<!doctype html", b"<html")):
        return "; it looks like an HTML page, e.g. an error page saved instead of the image"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return f"; first bytes {head[:8]!r}"
    return "; it looks like a text file"
