"""`softprompt export BUNDLE --merge --output DIR`: a bundle's model with LoRA merged in."""

from __future__ import annotations

import argparse
import sys

from softprompt.commands.common import EXIT_USAGE


def add_command(sub) -> None:
    """Add the `export` sub-command to the CLI's sub-parsers."""
    p = sub.add_parser("export", help="write a bundle's model with LoRA merged in")
    p.add_argument("bundle", help="adapter bundle (RUN/best)")
    p.add_argument("--merge", action="store_true", help="merge LoRA into the base weights")
    p.add_argument(
        "--output", required=True, help="directory to write (new or empty, or see --overwrite)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty --output directory (its files are removed) as one step",
    )
    p.add_argument("--model", help="base model (default: the one the bundle records)")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from softprompt.workflows.export import export_merged

    if not args.merge:
        print("export writes merged models only for now: pass --merge", file=sys.stderr)
        return EXIT_USAGE
    path = export_merged(args.bundle, args.output, model=args.model, overwrite=args.overwrite)
    print(f"wrote merged model to {path}", file=sys.stderr)
    return 0
