"""`softprompt inspect PROMPT_DIR`: nearest vocabulary tokens, norms and drift of a prompt."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from softprompt.commands.common import EXIT_USAGE


def add_command(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="show a soft prompt's virtual tokens: nearest vocabulary tokens, norms, drift",
    )
    p.add_argument("prompt", help="prompt directory or adapter bundle (RUN/best, ...)")
    p.add_argument("--top-k", type=int, default=5, help="nearest tokens per virtual token")
    p.add_argument("--json", dest="json_path", help="also write the report as JSON here")
    p.add_argument("--model", help="base model (default: the one recorded in the prompt)")
    p.add_argument("--task", help="a prompt bank's prompt to inspect (default: its first)")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from softprompt.workflows.inspect_prompt import format_report, inspect_prompt

    if args.top_k < 1:
        print(f"--top-k must be at least 1 (got {args.top_k})", file=sys.stderr)
        return EXIT_USAGE
    report = inspect_prompt(args.prompt, top_k=args.top_k, model=args.model, task=args.task)
    print(format_report(report))
    if args.json_path:
        path = Path(args.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        from softprompt.artifacts.manifest import write_bytes_atomically

        write_bytes_atomically(path, json.dumps(report, indent=2, ensure_ascii=False).encode())
        print(f"wrote {path}", file=sys.stderr)
    return 0
