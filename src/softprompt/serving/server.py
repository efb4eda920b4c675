"""The running server: one frozen model, its prompt pool, the engine, and their upkeep.

`PromptServer.load` builds the base model (`--model`, else the one the first servable
prompt under the directory records), reads every prompt, and `start` runs the engine and
a watcher that rescans the directory every `reload_interval` seconds, so prompts added or
removed appear or vanish without a restart.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from softprompt.artifacts.bundle import read_bundle
from softprompt.backbones.base import Backbone
from softprompt.backbones.loading import load_backbone
from softprompt.data.images import MAX_IMAGE_PIXELS
from softprompt.errors import UserError
from softprompt.inference.loaded import backbone_for_bundle, default_device
from softprompt.serving.engine import Engine
from softprompt.serving.images import ImageSpool
from softprompt.serving.metrics import ServerMetrics
from softprompt.serving.pool import PromptPool, prompt_dirs

logger = logging.getLogger("softprompt.serve")

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeOptions:
    """`softprompt serve`'s settings (see its --help)."""

    prompts_dir: str
    model: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 256
    api_key: str | None = None
    max_body_mb: float = 32.0
    reload_interval: float = 1.0
    max_image_pixels: int | None = None
    dtype: str = "float32"

    def check(self) -> None:
        """Raises UserError for settings the server refuses to start with."""
        if self.host not in LOOPBACK and not self.api_key:
            raise UserError(
                f"--host {self.host} accepts requests from other machines: set --api-key too"
            )
        if not Path(self.prompts_dir).is_dir():
            raise UserError(f"--prompts-dir {self.prompts_dir}: not a directory")


class PromptServer:
    """The model, the current `PromptPool`, the engine and the image spool."""

    def __init__(self, backbone: Backbone, options: ServeOptions) -> None:
        self.backbone = backbone
        self.options = options
        self.root = Path(options.prompts_dir)
        self.pool = PromptPool()
        self._extras_owner: list[str] = []
        self._reload_lock = threading.Lock()
        self.metrics = ServerMetrics(self._cache_counts)
        self.engine = Engine(
            backbone,
            options.max_batch_size,
            options.max_wait_ms,
            options.max_queue,
            observe=self.metrics.observe,
        )
        self.spool = ImageSpool(options.max_image_pixels or MAX_IMAGE_PIXELS)
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="softprompt-reload", daemon=True)

    @classmethod
    def load(cls, options: ServeOptions, read_prompts: bool = True) -> PromptServer:
        """The server of `options`, its prompts read (not started yet).

        Args:
            read_prompts: False leaves the pool empty: prompts are read one at a time
                when requests name them (a Ray replica's, serving/resident.py).

        Raises:
            UserError: bad settings, or no base model (no servable prompt and no --model).
        """
        options.check()
        backbone = _base_model(Path(options.prompts_dir), options)
        backbone.model.to(default_device())
        backbone.model.eval()
        server = cls(backbone, options)
        if read_prompts:
            server.reload()
        return server

    def reload(self) -> PromptPool:
        """Read the prompt directory again (changed, new and removed prompts)."""
        with self._reload_lock:
            self.pool = self.pool.rescan(self.root, self.backbone, self._extras_owner)
            cache = self.backbone.prompt_cache
            if cache is not None:  # every served prompt keeps its keys and values
                cache.max_entries = max(cache.max_entries, len(self.pool.prompts) + 8)
            return self.pool

    def start(self, watch: bool = True) -> None:
        """Run the engine and, with `watch`, the rescans of the prompt directory."""
        self.engine.start()
        if watch:
            self._watcher.start()

    def stop(self) -> None:
        """Answer what is queued, then stop the engine and the watcher."""
        self._stop.set()
        self.engine.stop()
        self.spool.close()

    def _watch(self) -> None:
        while not self._stop.wait(self.options.reload_interval):
            try:
                self.reload()
            except Exception:  # a bad scan must not end the server; the next one retries
                logger.exception("rescanning %s failed", self.root)

    def _cache_counts(self) -> tuple[int, int]:
        cache = self.backbone.prompt_cache
        return (cache.hits, cache.misses) if cache is not None else (0, 0)


def _base_model(root: Path, options: ServeOptions) -> Backbone:
    """`--model`, built the way the first prompt that records it was trained (image
    settings), or the model the first readable prompt records."""
    for name, path in prompt_dirs(root).items():
        try:
            bundle = read_bundle(path)
        except (UserError, OSError) as err:
            logger.warning("prompt %s unreadable: %s", name, err)
            continue
        if set(bundle.adapters) == {"prompt"} and (options.model or bundle.base_model):
            logger.info("base model from prompt %s", name)
            return backbone_for_bundle(bundle, options.model, options.dtype)
    if options.model is None:
        raise UserError(
            f"no servable prompt under {root} records its base model; pass --model BASE"
        )
    return load_backbone(options.model, dtype=options.dtype)
