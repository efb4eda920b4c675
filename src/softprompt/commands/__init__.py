"""CLI commands that live beside the core ones (train, eval, predict, export, compare).

Each module listed in `COMMAND_MODULES` defines `add_command(sub)`, which adds its
sub-parser and sets `func`. Modules import heavy libraries (matplotlib, gradio) inside
their command function, so `softprompt --help` stays fast.
"""

from __future__ import annotations

import importlib

COMMAND_MODULES: tuple[str, ...] = (
    "softprompt.commands.baseline",
    "softprompt.commands.report",
    "softprompt.commands.sweep",
    "softprompt.commands.inspect",
    "softprompt.commands.demo_ui",
)


def add_commands(sub) -> None:
    """Register every listed module's sub-command on the `sub` parsers."""
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_command(sub)
