"""`softprompt compare CONFIG [overrides]`: train one config with several methods; a table."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path


def add_command(sub) -> None:
    """Add the `compare` sub-command to the CLI's sub-parsers."""
    p = sub.add_parser("compare", help="train one config with several methods; a table")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--methods", default="prompt,lora,prompt+lora,full")
    p.add_argument("--output-dir", help="default: <training.output_dir>/compare")
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(args: argparse.Namespace) -> int:
    from softprompt.config.run import load_config
    from softprompt.workflows.compare import compare, markdown, parse_methods

    config = load_config(args.config, args.overrides)  # a bad config fails here, once
    methods = parse_methods(args.methods)
    out = Path(args.output_dir or Path(config.training.output_dir) / "compare")
    try:
        rows = compare(args.config, args.overrides, methods, out)
    except KeyboardInterrupt as stopped:
        # The method training saved its step (train/interrupt.py); the next compare
        # resumes it and skips the finished ones.
        print("interrupted; rerun to resume", file=sys.stderr)
        return 128 + int(getattr(stopped, "signum", signal.SIGINT))
    print(markdown(rows))
    print(f"wrote {out / 'compare.md'} and {out / 'compare.json'}", file=sys.stderr)
    return 0
