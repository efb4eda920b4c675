"""Regenerate the config reference (docs/config.md) from the typed config (`make docs`)."""

from __future__ import annotations

import re
from pathlib import Path

from softprompt.config.run import config_reference_markdown

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "config.md"
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def render(text: str) -> str:
    block = f"{START}\n{config_reference_markdown()}\n{END}"
    return re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)


if __name__ == "__main__":
    REFERENCE.write_text(render(REFERENCE.read_text(encoding="utf-8")), encoding="utf-8")
