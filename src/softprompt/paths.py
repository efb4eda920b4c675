"""Resolve a user-supplied *name* to a path that is guaranteed to stay inside a root folder.

A prompt name (`--prompts-dir runs --prompt aclsum/best`), a checkpoint name found in a
run directory, or a name a future HTTP request carries must never reach a file outside
its root: not through an absolute path, not through `..`, not through a symlink that
points elsewhere, not through a NUL byte that C-level file APIs would cut the name at.
Every such lookup goes through `resolve_under`, so there is one place to get this right.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from softprompt.errors import UserError

# One path segment: letters (any script), digits, and . _ - + = @. No separators, no
# spaces or control characters, nothing a shell or a URL would treat specially.
_SEGMENT_RE = re.compile(r"[\w.+=@-]+")
MAX_NAME_LENGTH = 255
MAX_SEGMENTS = 8
_ALLOWED = "letters, digits and . _ - + = @, separated by '/'"


class UnsafeNameError(UserError):
    """A name that could point outside its root, or that is not a valid name at all."""


def _reject(name: object, what: str, reason: str) -> UnsafeNameError:
    return UnsafeNameError(
        f"{what} {name!r} is not allowed: {reason}; a {what} is a relative name made of "
        f"{_ALLOWED} (at most {MAX_SEGMENTS} parts), e.g. 'best' or 'my_run/best'"
    )


def check_name(name: object, what: str = "name") -> tuple[str, ...]:
    """Validate a name's syntax and return its segments (no filesystem access).

    Raises:
        UnsafeNameError: naming the reason (absolute, `..`, NUL byte, hidden part, ...).
    """
    if not isinstance(name, str):
        raise _reject(name, what, f"it is a {type(name).__name__}, not text")
    if not name:
        raise _reject(name, what, "it is empty")
    if "\x00" in name:
        raise _reject(name, what, "it contains a NUL byte")
    if len(name) > MAX_NAME_LENGTH:
        raise _reject(name, what, f"it is longer than {MAX_NAME_LENGTH} characters")
    if "\\" in name:
        raise _reject(name, what, "it contains a backslash (use '/')")
    if name.startswith("/") or os.path.isabs(name):
        raise _reject(name, what, "it is an absolute path")
    if name.startswith("~"):
        raise _reject(name, what, "it starts with '~' (a home directory)")
    segments = tuple(name.rstrip("/").split("/"))
    if len(segments) > MAX_SEGMENTS:
        raise _reject(name, what, f"it has more than {MAX_SEGMENTS} parts")
    for segment in segments:
        if segment == "..":
            raise _reject(name, what, "it contains '..' (a parent directory)")
        if segment in ("", "."):
            raise _reject(name, what, "it contains an empty part or '.'")
        if segment.startswith("."):
            # Hidden entries include half-written `.tmp-*` directories: never resolvable.
            raise _reject(name, what, f"part {segment!r} is hidden (starts with '.')")
        if not _SEGMENT_RE.fullmatch(segment):
            raise _reject(name, what, f"part {segment!r} has characters outside {_ALLOWED}")
    return segments


def resolve_under(root: str | Path, name: str, what: str = "name") -> Path:
    """The path of `name` inside `root`, refusing anything that would leave `root`.

    The name's syntax is checked first (`check_name`); then the joined path is resolved
    with symlinks followed, and must still lie inside the resolved root. A symlink inside
    the root that points inside it is fine; one pointing out is refused. The target need
    not exist (callers report missing files in their own words).

    Args:
        root: the folder names are looked up in.
        name: the user-supplied name, e.g. ``"best"`` or ``"aclsum/checkpoint-40"``.
        what: what the name is called in error messages ("prompt name", ...).

    Raises:
        UnsafeNameError: the name is invalid or escapes `root`.
    """
    segments = check_name(name, what)
    base = Path(root).resolve()
    target = base.joinpath(*segments)
    resolved = target.resolve()
    if resolved != base and base not in resolved.parents:
        raise _reject(name, what, f"it leads outside {root} (through a symbolic link)")
    return target


def resolve_prompt_name(prompts_dir: str | Path, name: str) -> Path:
    """The prompt directory called `name` under `prompts_dir` (see `resolve_under`)."""
    return resolve_under(prompts_dir, name, "prompt name")


def is_inside(root: str | Path, path: str | Path) -> bool:
    """True when `path`, with symlinks followed, lies inside `root` (or is `root`)."""
    base = Path(root).resolve()
    resolved = Path(path).resolve()
    return resolved == base or base in resolved.parents
