"""`softprompt demo-ui`: a Gradio page to try a prompt on images or text (127.0.0.1 only)."""

from __future__ import annotations

import argparse
import errno
import logging
import socket
import sys
from pathlib import Path

import yaml

from softprompt.commands.common import EXIT_USAGE, port_number

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
    p.add_argument(
        "--port",
        type=port_number,
        default=7860,
        help="TCP port to serve on, 1-65535 (default 7860); it must be free",
    )
    p.add_argument("--max-new-tokens", type=int)
    p.set_defaults(func=_cmd_demo_ui)


def port_problem(host: str, port: int) -> str | None:
    """Why the page cannot listen on host:port (None: it can), worded with our --port flag.

    Binds and closes at once, as the server will bind it (address reuse on), so a port
    that only lingers after a closed connection counts as free.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return f"port {port} is in use: pass --port with a free one"
            return f"cannot serve on {host}:{port} ({err.strerror}): pass --port with a free one"
    return None


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
    problem = port_problem(args.host, args.port)  # before the model loads, which takes a while
    if problem:
        print(problem, file=sys.stderr)
        return EXIT_USAGE
    from softprompt.inference.loaded import LoadedModel

    loaded = LoadedModel.from_bundle(prompt, model=args.model, max_new_tokens=args.max_new_tokens)
    session = DemoSession(loaded, name=str(prompt), max_new_tokens=args.max_new_tokens)
    app = build_app(session, baseline=args.baseline)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    try:
        url = launch(app, args.host, args.port)
    except OSError:
        # Gradio's own message names its GRADIO_SERVER_PORT setting; the port was free a
        # moment ago, so another program took it meanwhile.
        problem = port_problem(args.host, args.port) or (
            f"cannot serve on {args.host}:{args.port}: pass --port with a free one"
        )
        print(problem, file=sys.stderr)
        return EXIT_USAGE
    print(f"demo UI: {url} (Ctrl-C stops it)", file=sys.stderr, flush=True)
    app.block_thread()
    return 0
