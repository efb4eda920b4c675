"""`softprompt demo-ui`: a Gradio page to try a prompt on images or text (127.0.0.1 only)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from softprompt.commands.common import EXIT_USAGE

# The embedded VLM prompt `make demo` trains (demo/run_demo.py with this config).
DEMO_CONFIG = Path("configs/easyvqa_effnet_smollm2.yaml")
DEMO_RUN_DIR = "runs/easyvqa_effnet_smollm2"


def add_command(sub) -> None:
    p = sub.add_parser(
        "demo-ui", help="a web page (Gradio) to try a prompt on images or text, on 127.0.0.1"
    )
    p.add_argument(
        "--prompt",
        help="prompt directory or bundle (default: the embedded VLM prompt `make demo` trains)",
    )
    p.add_argument("--model", help="base model (default: the one recorded in the prompt)")
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also answer with every adapter off (zero-shot), side by side",
    )
    p.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-new-tokens", type=int)
    p.set_defaults(func=_cmd_demo_ui)


def demo_prompt_dir() -> Path:
    """best/ of the run `make demo` writes (its config's output_dir, from the repo root)."""
    run_dir = DEMO_RUN_DIR
    if DEMO_CONFIG.is_file():
        raw = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8")) or {}
        run_dir = (raw.get("training") or {}).get("output_dir") or run_dir
    return Path(run_dir) / "best"


def _cmd_demo_ui(args: argparse.Namespace) -> int:
    prompt = Path(args.prompt) if args.prompt else demo_prompt_dir()
    if args.prompt is None and not prompt.is_dir():
        print(
            f"no --prompt given and the demo prompt {prompt} does not exist yet: run "
            "`make demo` first (from the repository root), or pass --prompt DIR",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from softprompt.workflows.ui import DemoSession, build_app, is_loopback, launch

    if not is_loopback(args.host):
        print(
            f"--host {args.host}: the demo UI serves only this machine (127.0.0.1)", file=sys.stderr
        )
        return EXIT_USAGE
    from softprompt.inference.loaded import LoadedModel

    loaded = LoadedModel.from_bundle(prompt, model=args.model, max_new_tokens=args.max_new_tokens)
    session = DemoSession(loaded, name=str(prompt), max_new_tokens=args.max_new_tokens)
    app = build_app(session, baseline=args.baseline)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    try:
        url = launch(app, args.host, args.port)
    except OSError as err:  # gradio's "Cannot find empty port" among them
        print(f"cannot serve on {args.host}:{args.port}: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(f"demo UI: {url} (Ctrl-C stops it)", file=sys.stderr, flush=True)
    app.block_thread()
    return 0
