"""`softprompt baseline CONFIG [overrides]` (and `eval --zero-shot`): the zero-shot
baseline, scored like the tuned adapters and saved beside the run for reports."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from softprompt.commands.common import EXIT_USAGE


def add_command(sub) -> None:
    p = sub.add_parser(
        "baseline",
        help="score the frozen model with the hard prompt only (no adapters) and save it "
        "under <training.output_dir>/baseline for reports",
    )
    p.add_argument("config", help="YAML config file (the run's)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--split", choices=["val", "test"], help="only this split")
    p.add_argument("--model", help="base model, overriding model.name_or_path")
    p.add_argument("--output-dir", help="default: <training.output_dir>/baseline")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    results, out = _run(args, args.output_dir)
    if results is None:
        return EXIT_USAGE
    print(json.dumps(results, indent=2))
    print(f"wrote the zero-shot baseline to {out}", file=sys.stderr)
    return 0


def zero_shot_eval(args: argparse.Namespace) -> int:
    """`eval --zero-shot`: the baseline, plus eval's own --output / --predictions files."""
    used = [
        flag
        for flag, value in (
            ("--prompt", args.prompt),
            ("--adapter", args.adapter),
            ("--loss-only", args.loss_only),
        )
        if value
    ]
    if used:
        print(
            f"--zero-shot scores the frozen model with predictions; drop {', '.join(used)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    results, out = _run(args, None)
    if results is None:
        return EXIT_USAGE
    text = json.dumps(results, indent=2)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        from softprompt.artifacts.manifest import write_bytes_atomically

        write_bytes_atomically(Path(args.output), text.encode("utf-8"))
    if args.predictions:
        from softprompt.workflows.report.baseline import predictions_file

        for split in ("val", "test"):
            if split in results:
                target = Path(args.predictions).with_suffix(f".{split}.jsonl")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(predictions_file(out, split), target)
    print(text)
    print(f"saved as the zero-shot baseline in {out}", file=sys.stderr)
    return 0


def _run(args: argparse.Namespace, output_dir: str | None):
    """(results, baseline directory); results None when the config has no labelled data."""
    from softprompt.config.run import load_config
    from softprompt.workflows.report.baseline import baseline_dir, run_baseline

    config = load_config(args.config, args.overrides)
    out = Path(output_dir) if output_dir else baseline_dir(config)
    results = run_baseline(
        config,
        splits=(args.split,) if args.split else ("val", "test"),
        output_dir=out,
        model=args.model,
        progress=not args.no_progress,
    )
    if not any(split in results for split in ("val", "test")):
        print("no labelled data: set data.val_test_path or data.test_path", file=sys.stderr)
        return None, out
    return results, out
