"""`softprompt serve`: every prompt under a directory, on one frozen model, over HTTP."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

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
    _add_ray_flags(p)
    p.set_defaults(func=_cmd_serve)


def _positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _add_ray_flags(p: argparse.ArgumentParser) -> None:
    ray = p.add_argument_group("Ray cluster (docs/serving_ray.md)")
    ray.add_argument(
        "--ray", action="store_true", help="serve from replicas on a Ray cluster (Ray Serve)"
    )
    ray.add_argument(
        "--ray-address",
        help="cluster to join ('auto': the one `ray start` made here); default: start one "
        "on this machine, bound to 127.0.0.1",
    )
    ray.add_argument("--replicas", type=_positive_int, default=2, help="model replicas")
    ray.add_argument(
        "--max-prompts-per-replica",
        type=_positive_int,
        default=8,
        help="prompts a replica holds (least recently used dropped)",
    )
    ray.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs per replica")
    ray.add_argument("--replica-gpus", type=float, default=0.0, help="GPUs per replica")


def _cmd_serve(args: argparse.Namespace) -> int:
    if args.ray:
        return _serve_on_ray(args)
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


def _serve_on_ray(args: argparse.Namespace) -> int:
    from softprompt.serving.ray_cluster import RaySettings, connect

    settings = RaySettings.from_flags(
        prompts_dir=args.prompts_dir, model=args.model, replicas=args.replicas,
        max_prompts_per_replica=args.max_prompts_per_replica, replica_cpus=args.replica_cpus,
        replica_gpus=args.replica_gpus, max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, api_key=args.api_key,
        max_body_mb=args.max_body_mb, reload_interval=args.reload_interval,
        max_image_pixels=args.max_image_pixels, dtype=args.dtype,
    )  # fmt: skip
    settings.serve_options(args.host).check()  # refused here, before a cluster starts
    started = connect(args.ray_address)
    from softprompt.serving.ray_app import deploy, describe, undeploy

    try:
        url = deploy(settings, args.host, args.port)
        listed = describe()
        logger.info(
            "serving %d prompts (%d refused) from %d replicas, up to %d prompts each, at %s",
            len(listed["loaded"]), len(listed["refused"]), settings.replicas,
            settings.max_prompts_per_replica, url,
        )  # fmt: skip
        _wait_for_stop()
    finally:
        undeploy(started)
    print("server stopped", file=sys.stderr)
    return 0


def _wait_for_stop() -> None:
    """Until SIGTERM or Ctrl-C (the replicas answer what they hold as they stop)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):  # a short wait lets the handlers run promptly
        pass
