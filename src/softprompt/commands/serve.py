"""`softprompt serve`: every prompt under a directory, on one frozen model, over HTTP."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from softprompt.commands.common import port_number

logger = logging.getLogger("softprompt.serve")


def add_command(sub) -> None:
    """Add the `serve` sub-command to the CLI's sub-parsers."""
    p = sub.add_parser(
        "serve", help="serve every prompt under a directory (OpenAI-compatible HTTP API)"
    )
    p.add_argument("--prompts-dir", required=True, help="directory of prompts, bundles and banks")
    p.add_argument("--model", help="base model (default: the one the first prompt records)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (other than loopback needs --api-key)"
    )
    p.add_argument("--port", type=port_number, default=8000)
    p.add_argument("--max-batch-size", type=int, default=16, help="inputs answered together")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="wait for more inputs this long")
    p.add_argument("--max-queue", type=int, default=256, help="inputs waiting (503 beyond)")
    p.add_argument("--api-key", help="required as 'Authorization: Bearer KEY' on /v1")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="request body limit (413)")
    p.add_argument(
        "--reload-interval",
        type=float,
        default=1.0,
        help="seconds between rescans of --prompts-dir",
    )
    p.add_argument("--max-image-pixels", type=int, help="images over this many pixels get 400")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from softprompt.serving.app import create_app
    from softprompt.serving.server import PromptServer, ServeOptions

    options = ServeOptions(
        prompts_dir=args.prompts_dir,
        model=args.model,
        host=args.host,
        port=args.port,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        api_key=args.api_key,
        max_body_mb=args.max_body_mb,
        reload_interval=args.reload_interval,
        max_image_pixels=args.max_image_pixels,
        dtype=args.dtype,
    )
    server = PromptServer.load(options)
    pool = server.pool
    logger.info(
        "serving %d prompts on %s (%d refused) at http://%s:%d/v1",
        len(pool.prompts), server.backbone.name_or_path, len(pool.refused), args.host, args.port,
    )  # fmt: skip
    # uvicorn handles SIGTERM/SIGINT: it stops accepting, lets requests in flight finish,
    # then the app's lifespan drains the queue and stops the engine.
    config = uvicorn.Config(
        create_app(server), host=args.host, port=args.port, log_level="warning",
        timeout_graceful_shutdown=60,
    )  # fmt: skip
    # After draining, uvicorn raises the signal again with the handler that was there
    # before it: for SIGTERM a no-op, so a drained stop exits 0 (SIGINT keeps its default).
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.Server(config).run()
    print("server stopped", file=sys.stderr)
    return 0
