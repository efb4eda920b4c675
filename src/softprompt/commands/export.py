"""`softprompt export PROMPT --format FORMAT --output DIR`: a bundle's model with LoRA merged
in (`--format merged`, or `--merge`), or a soft prompt for vLLM's prompt_embeds
(`--format vllm-prompt-embeds`)."""

from __future__ import annotations

import argparse
import sys

from softprompt.commands.common import EXIT_USAGE

FORMATS = ("merged", "vllm-prompt-embeds")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


def add_command(sub) -> None:
    """Add the `export` sub-command to the CLI's sub-parsers."""
    p = sub.add_parser(
        "export", help="write a bundle's model with LoRA merged in, or a prompt for vLLM"
    )
    p.add_argument("bundle", metavar="PROMPT", help="prompt directory or adapter bundle (RUN/best)")
    p.add_argument(
        "--format",
        choices=FORMATS,
        help="merged: the model with LoRA (or a full fine-tune) merged in; "
        "vllm-prompt-embeds: the soft prompt and its input recipe for "
        "`vllm serve --enable-prompt-embeds`",
    )
    p.add_argument("--merge", action="store_true", help="the same as --format merged")
    p.add_argument(
        "--output", required=True, help="directory to write (new or empty, or see --overwrite)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty --output directory (its files are removed) as one step",
    )
    p.add_argument("--model", help="base model (default: the one the bundle records)")
    p.add_argument(
        "--task", help="vllm-prompt-embeds of a multi-task prompt bank: the task to export"
    )
    p.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="vllm-prompt-embeds: the dtype of the tensors (auto: the one the checkpoint "
        "is stored in)",
    )
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    fmt = _format(args)
    if fmt is None:
        return EXIT_USAGE
    if fmt == "merged":
        from softprompt.workflows.export import export_merged

        path = export_merged(args.bundle, args.output, model=args.model, overwrite=args.overwrite)
        print(f"wrote merged model to {path}", file=sys.stderr)
        return 0
    from softprompt.artifacts.manifest import META_FILE, read_json_object
    from softprompt.workflows.export_vllm import export_vllm_prompt_embeds

    path = export_vllm_prompt_embeds(
        args.bundle,
        args.output,
        model=args.model,
        task=args.task,
        dtype=args.dtype,
        overwrite=args.overwrite,
    )
    meta = read_json_object(path / META_FILE)
    print(f"wrote the soft prompt for vLLM's prompt_embeds to {path}", file=sys.stderr)
    print(
        f"serve its base model with: vllm serve {meta['checkpoint']} --enable-prompt-embeds "
        f"--dtype {meta['dtype']} (trusted callers only: see docs/vllm.md)",
        file=sys.stderr,
    )
    return 0


def _format(args: argparse.Namespace) -> str | None:
    """The export format the flags ask for (None: they ask for none, or disagree; said)."""
    if args.merge and args.format not in (None, "merged"):
        print(f"--merge and --format {args.format} disagree: pass one of them", file=sys.stderr)
        return None
    fmt = "merged" if args.merge else args.format
    if fmt is None:
        print(
            "export needs a format: --merge (--format merged) or --format vllm-prompt-embeds",
            file=sys.stderr,
        )
        return None
    if fmt == "merged" and (args.task is not None or args.dtype != "auto"):
        print("--task and --dtype are for --format vllm-prompt-embeds", file=sys.stderr)
        return None
    return fmt
