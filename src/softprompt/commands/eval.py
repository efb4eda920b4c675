"""`softprompt eval CONFIG [overrides]`: score a prompt (or the bare model) on the config's data."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from softprompt.commands.common import (
    EXIT_USAGE,
    adapter_switches,
    add_adapter_switch,
    add_prompts_dir,
    prompt_path,
)


def add_command(sub) -> None:
    """Add the `eval` sub-command to the CLI's sub-parsers."""
    p = sub.add_parser("eval", help="evaluate a prompt (or the bare model) on the config's data")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument(
        "--prompt", help="prompt directory (RUN/best, RUN/checkpoint-N); none = zero-shot"
    )
    add_prompts_dir(p)
    p.add_argument("--model", help="base model, overriding model.name_or_path")
    p.add_argument("--split", choices=["val", "test"], help="only this split")
    p.add_argument("--output", help="write the metrics JSON here")
    p.add_argument("--predictions", help="write per-example predictions (PATH.<split>.jsonl)")
    p.add_argument("--loss-only", action="store_true", help="skip generation metrics")
    p.add_argument(
        "--zero-shot",
        action="store_true",
        help="the frozen model with the hard prompt only (no --prompt); also saved under "
        "<training.output_dir>/baseline, as `softprompt baseline` does",
    )
    add_adapter_switch(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from softprompt.config.run import load_config
    from softprompt.inference.eval_run import run_evaluation

    if args.zero_shot:
        from softprompt.commands.baseline import zero_shot_eval

        return zero_shot_eval(args)
    config = load_config(args.config, args.overrides)
    results = run_evaluation(
        config,
        prompt_dir=prompt_path(args),
        model=args.model,
        splits=(args.split,) if args.split else ("val", "test"),
        predict=not args.loss_only,
        progress=not args.no_progress,
        predictions_path=args.predictions,
        adapters=adapter_switches(args.adapter),
    )
    if not any(split in results for split in ("val", "test")):
        print("no labelled data: set data.val_test_path or data.test_path", file=sys.stderr)
        return EXIT_USAGE
    text = json.dumps(results, indent=2)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        from softprompt.artifacts.manifest import write_bytes_atomically

        write_bytes_atomically(Path(args.output), text.encode("utf-8"))
    print(text)
    return 0
