"""Command line: parses arguments and calls the library, nothing more.

The sub-commands are the modules of `softprompt.commands.COMMANDS`; this module builds
the parser from them, sets up logging and turns user errors into exit codes.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import warnings
from pathlib import Path

from softprompt.commands import COMMANDS
from softprompt.commands.common import EXIT_USAGE


def _setup_logging(verbose: bool) -> None:
    from softprompt.train.launch import is_main_process

    level = logging.DEBUG if verbose else logging.INFO
    if not is_main_process():
        level = logging.WARNING  # one copy of the progress log, from the first process
    logging.basicConfig(
        level=level,
        format="%(asctime)s - %(levelname)s - %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("softprompt").setLevel(level)
    for noisy in ("transformers", "accelerate", "peft", "datasets", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="transformers")
    warnings.filterwarnings("ignore", category=FutureWarning)


def _no_room_message(err: Exception) -> str | None:
    """One line for a write that found its disk full, over quota or read-only, where no
    caller named what was being written (the write sites that know say more); else None."""
    from softprompt.artifacts.manifest import disk_full_error, no_room_errno

    code = no_room_errno(err)
    if code is None:
        return None
    target = getattr(err, "filename", None)
    if not target:
        return f"a write failed: {os.strerror(code).lower()}; free some space and rerun"
    return str(disk_full_error(Path(target).parent, Path(target).name, 0, code, ""))


def build_parser() -> argparse.ArgumentParser:
    """The `softprompt` parser: `-v` and one sub-command per module of the command table."""
    parser = argparse.ArgumentParser(
        prog="softprompt", description="Soft prompts for frozen text and vision-language models."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; returns its exit code (2 for a user error, 130 for Ctrl-C).

    Args:
        argv: the arguments after the program name (default: `sys.argv[1:]`).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    from softprompt.errors import USER_ERRORS

    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:  # noqa: BLE001 - only writes that found no room are handled
        no_room = _no_room_message(err)
        if no_room is None:
            raise
        print(f"error: {no_room}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as stopped:
        # Training has saved a checkpoint by now (see train/interrupt.py); no traceback.
        # 128 + the signal number is what shells report for it (130 for Ctrl-C).
        print("interrupted", file=sys.stderr)
        return 128 + int(getattr(stopped, "signum", signal.SIGINT))


if __name__ == "__main__":
    raise SystemExit(main())
