"""`ConfigError`: a problem with a run config, worded for the user; and the wording of
pydantic's validation errors as `KEY: problem (got VALUE)`."""

from __future__ import annotations

import reprlib
import types
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from softprompt.errors import UserError


class ConfigError(UserError):
    """A configuration problem, with a message meant for the user (names key and value)."""


SHORT = reprlib.Repr()
SHORT.maxstring, SHORT.maxother, SHORT.maxlevel = 60, 60, 3
SHORT.maxlist = SHORT.maxdict = SHORT.maxtuple = SHORT.maxset = 4


def printable(text: str) -> str:
    """`text` as one paragraph: a key or message holding a newline or control character
    is quoted."""
    return text if text.isprintable() else repr(text)


def where(loc: tuple) -> str:
    """A pydantic error location as the config writes it: `tasks[0].data`."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return printable(text[:200])


def describe_error(
    item: dict[str, Any],
    model: type[BaseModel],
    suggest: Callable[[list[str]], str | None] = lambda parts: None,
) -> str:
    """One pydantic error of validating `model` as `KEY: problem (got VALUE)`.

    VALUE is the offending value only. A check of a whole section (or of the whole
    config) names its keys and values in its message, and a missing key has no value:
    their input is the enclosing mapping, which is not shown.

    Args:
        item: one entry of `ValidationError.errors()`.
        model: the model validated (the sections are found along the error's location).
        suggest: the key names of the location, without list indices -> the valid key an
            unknown one most likely meant (None: no guess).
    """
    parts = [str(p) for p in item["loc"] if not isinstance(p, int)]
    loc, kind, value = where(item["loc"]), item["type"], item.get("input")
    if kind == "extra_forbidden":
        close = suggest(parts)
        return f"unknown key {loc!r}" + (f"; did you mean {close!r}?" if close else "")
    if kind == "missing":
        return f"{loc}: missing; this key is required"
    got = f" (got {SHORT.repr(value)})"
    section = section_at(model, parts)
    if kind == "model_type" and section is not None:
        names = list(section.model_fields)
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        return f"{loc}: must be a mapping of {'.'.join(parts)} keys ({shown}){got}"
    if kind in ("value_error", "assertion_error") and section and isinstance(value, dict):
        got = ""  # a section's own check: its message names the keys and values
    msg = printable(item["msg"].removeprefix("Value error, "))
    if kind == "string_type" and isinstance(value, bool):
        msg += "; YAML reads unquoted yes/no/on/off/true/false as booleans, so quote the word"
    return f"{loc}: {msg}{got}" if loc else f"{msg}{got}"


def section_at(model: type[BaseModel], parts: list[str]) -> type[BaseModel] | None:
    """The model (section, or list entry) that key `parts` of `model` holds; None for a
    plain value or an unknown key."""
    node: type[BaseModel] | None = model
    for part in parts:
        field = node.model_fields.get(part) if node is not None else None
        if field is None:
            return None
        node = _model_in(field.annotation)
    return node


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class an annotation holds: `X`, `list[X]`, `X | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
