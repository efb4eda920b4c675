"""`softprompt train CONFIG [overrides]`: train from a YAML config, here or under accelerate."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from softprompt.commands.common import EXIT_USAGE


def add_command(sub) -> None:
    """Add the `train` sub-command to the CLI's sub-parsers."""
    p = sub.add_parser("train", help="train a soft prompt from a YAML config")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument(
        "--resume", help="checkpoint directory to continue from, or 'auto' for the newest"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--launcher",
        choices=["accelerate"],
        help="re-run this command under `accelerate launch`: data-parallel processes",
    )
    p.add_argument(
        "--num-processes", type=int, help="with --launcher: processes (default: one per GPU)"
    )
    p.add_argument(
        "--accelerate-config",
        help="with --launcher: an accelerate config file (see configs/accelerate/)",
    )
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from softprompt.config.run import load_config
    from softprompt.train.launch import is_main_process

    if args.launcher == "accelerate":
        if args.num_processes is not None and args.num_processes < 1:
            print(f"--num-processes must be at least 1 (got {args.num_processes})", file=sys.stderr)
            return EXIT_USAGE
        if args.accelerate_config is not None and not Path(args.accelerate_config).is_file():
            print(f"accelerate config not found: {args.accelerate_config}", file=sys.stderr)
            return EXIT_USAGE
        return _relaunch_under_accelerate(args)
    if args.num_processes is not None or args.accelerate_config is not None:
        print("--num-processes/--accelerate-config need --launcher accelerate", file=sys.stderr)
        return EXIT_USAGE
    from softprompt.train.loop import train

    config = load_config(args.config, args.overrides)
    results = train(config, resume=args.resume, progress=not args.no_progress)
    if is_main_process():
        summary = {k: v for k, v in results.items() if k != "evaluations"}
        print(json.dumps(summary, indent=2))
    return 0


def _relaunch_under_accelerate(args: argparse.Namespace) -> int:
    from softprompt.config.run import load_config
    from softprompt.train.launch import accelerate_launch_command

    load_config(args.config, args.overrides)  # a bad config fails here, not N times
    train_args = ["-v"] if args.verbose else []
    train_args += ["train", args.config, *args.overrides]
    if args.resume:
        train_args += ["--resume", args.resume]
    if args.no_progress:
        train_args.append("--no-progress")
    command = accelerate_launch_command(train_args, args.num_processes, args.accelerate_config)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)  # the launcher takes over this process (and Ctrl-C)
    return 0  # not reached
