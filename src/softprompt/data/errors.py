"""The one error type every data reader raises for bad input files.

Readers report problems in the user's data (a missing field, a malformed line, a
file that is not there) as `DataError`, so the CLI can print the message as it is
instead of a traceback. Messages name the file and, where it applies, the 1-based
line number, the field and the fields that were present, e.g.::

    data/train.jsonl:17: missing field 'target' (fields present: prompt, caption);
    set data.target_field
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from softprompt.errors import UserError


class DataError(UserError):
    """A data file or data source cannot be read as configured.

    Subclasses `ValueError` so callers that already catch bad values keep working.
    """


def where(source: str, line: int | None = None) -> str:
    """Format a location prefix: ``"path:line"`` or ``"path"``.

    Args:
        source: the file path or dataset spec as the user wrote it.
        line: 1-based line (or record) number, if known.

    Returns:
        The prefix to put before ``": <problem>"`` in an error message.
    """
    return f"{source}:{line}" if line is not None else source


def fields_present(fields: Iterable[object]) -> str:
    """List the fields a record has, for "fields present: ..." hints."""
    names = [str(f) for f in fields]
    return ", ".join(names) if names else "none"


def check_encodable(text: str, loc: str, field: str) -> str:
    """Refuse text that is not valid Unicode, naming where it is.

    A JSON escape like ``"\\ud800"`` (half of a UTF-16 pair) or a file name in another
    encoding gives Python a string with a lone surrogate; tokenizers then fail deep
    inside training. Finding it here names the line instead.

    Returns:
        `text` unchanged.

    Raises:
        DataError: naming `loc`, `field` and the offending character.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        raise DataError(
            f"{loc}: field {field!r} holds an invalid character {bad!r} at position "
            f"{e.start} (half of a UTF-16 surrogate pair, or text in another encoding); "
            "fix the text or its \\u escape"
        ) from None
    return text


def looked_for(path: str | Path) -> Path:
    """The absolute path a "not found" message names: resolved where it can be, as given
    otherwise (a symlink loop cannot be resolved, and must not turn into a crash)."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):
        return Path(path).absolute()
