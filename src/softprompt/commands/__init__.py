"""The CLI's command table: one module per sub-command, in the order `softprompt --help`
lists them.

Each module defines `add_command(sub)`, which adds its sub-parser and sets `func` (the
handler `commands/cli.py` calls with the parsed arguments). Modules import the library,
and heavy libraries (torch, matplotlib, gradio), inside their handlers only, so that
`softprompt --help` stays fast.
"""

from __future__ import annotations

from types import ModuleType

from softprompt.commands import (
    baseline,
    compare,
    demo_ui,
    export,
    inspect,
    linear_probe,
    predict,
    report,
    serve,
    sweep,
    train,
)
from softprompt.commands import eval as evaluate

COMMANDS: tuple[ModuleType, ...] = (
    train,
    evaluate,
    predict,
    serve,
    export,
    compare,
    baseline,
    linear_probe,
    report,
    sweep,
    inspect,
    demo_ui,
)
