"""`softprompt sweep CONFIG [overrides] --grid KEY=V1,V2,...`: a grid of runs, as a table."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

EXIT_FAILED_CELLS = 1


def add_command(sub) -> None:
    """Add the `sweep` sub-command to the CLI's sub-parsers."""
    p = sub.add_parser(
        "sweep",
        help="train every combination of grid values, each as its own run; a table",
        description="Train every combination of the --grid values in turn, each as its own "
        "`softprompt train` process under OUTPUT_DIR/<cell>/. Finished cells are not rerun; "
        "an interrupted cell resumes from its checkpoint.",
    )
    p.add_argument("config", help="YAML config every cell starts from")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides for every cell")
    p.add_argument(
        "--grid",
        action="append",
        required=True,
        metavar="KEY=V1,V2,...",
        help="a config key and its values (repeatable: the cells are the product); a value "
        'holding a comma goes in double quotes: KEY=a,"b, c"',
    )
    p.add_argument("--output-dir", help="default: <training.output_dir>/sweep")
    p.add_argument(
        "--fail-fast",
        action="store_true",
        help="stop at the first cell that fails (default: run the rest, then exit non-zero)",
    )
    p.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from softprompt.workflows.sweep import default_output_dir, markdown, sweep

    if args.output_dir is not None:
        out = Path(args.output_dir)
    else:
        out = default_output_dir(args.config, args.overrides, args.grid)
    try:
        result = sweep(args.config, args.overrides, args.grid, out, fail_fast=args.fail_fast)
    except KeyboardInterrupt as stopped:
        # The cell training saved its step (train/interrupt.py); the next sweep resumes
        # it and skips the finished cells.
        print("interrupted; rerun to resume", file=sys.stderr)
        return 128 + int(getattr(stopped, "signum", signal.SIGINT))
    print(markdown(result))
    print(f"wrote {out / 'sweep.md'} and {out / 'sweep.json'}", file=sys.stderr)
    if result.failures:
        names = ", ".join(failure["cell"] for failure in result.failures)
        print(f"{len(result.failures)} cell(s) failed: {names}", file=sys.stderr)
        return EXIT_FAILED_CELLS
    return 0
