"""`softprompt report RUN_DIR`: one self-contained HTML page (+ Markdown) about a run."""

from __future__ import annotations

import argparse
import sys


def add_command(sub) -> None:
    p = sub.add_parser(
        "report",
        help="an HTML report of a run: metrics against a baseline, curves, examples",
    )
    p.add_argument("run_dir", help="a training run directory (training.output_dir)")
    p.add_argument(
        "--baseline",
        help="'zero-shot' (RUN_DIR/baseline, computed first when missing) or another run "
        "directory; default: RUN_DIR/baseline when it exists, else none",
    )
    p.add_argument("--output", help="the HTML file (default: RUN_DIR/report/report.html)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from softprompt.workflows.report.build import write_report

    paths = write_report(
        args.run_dir, baseline=args.baseline, output=args.output, progress=not args.no_progress
    )
    print(f"wrote {paths.html} and {paths.markdown}", file=sys.stderr)
    print(paths.html)
    return 0
