"""Prompts read one at a time, when a request first names them, and the catalogue of all.

A replica of `softprompt serve --ray` (serving/ray_app.py) holds only the prompts its
requests name: Ray Serve's model multiplexing keeps the few most recently used and routes
each request to a replica that holds its prompt. `ResidentPrompts.read` gives such a
prompt (`HeldPrompt`), `refresh` reads it again when its directory changed (a prompt
retrained in place) and says when it is gone; a prompt the multiplexer drops is freed
when the last request that uses it is answered.

Names are those `softprompt serve` serves (pool.py): the directories `prompt_dirs` finds
under the root, and `DIR/TASK` for a bank's tasks. A name the directory does not hold is
never turned into a path. The listing endpoints show every servable prompt (`listing`):
a full read with the replica's model, as `softprompt serve` reads them, kept as model
cards (not prompts) and done again only when a directory changed.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from softprompt.serving.pool import PromptPool, ServedPrompt, load_dir, prompt_dirs, signature
from softprompt.serving.server import PromptServer

# Prompt key/value cache entries kept beyond the held prompts: a held bank task and the
# prompts of requests still answered after their prompt was dropped.
CACHE_SLACK = 8


class PromptMissing(LookupError):
    """The directory holds no prompt of that name (or no longer does)."""


@dataclass(eq=False)
class HeldPrompt:
    """One prompt a replica holds.

    Attributes:
        name: the served name (`DIR` or `DIR/TASK`).
        directory: its directory, relative to the root.
        prompt: the prompt as last read.
        signature: the directory's files as last read (`pool.signature`).
        checked_at: `time.monotonic()` of the last look at the directory.
    """

    name: str
    directory: str
    prompt: ServedPrompt
    signature: tuple
    checked_at: float


class ResidentPrompts:
    """The prompts one server reads on demand, and the catalogue of every prompt.

    Args:
        server: a loaded server whose own pool stays empty (`PromptServer.load(...,
            read_prompts=False)`), started without its directory watcher.
        keep: how many prompts the caller holds at most (sizes the prompt cache).
    """

    def __init__(self, server: PromptServer, keep: int) -> None:
        self.server = server
        self.root = server.root
        self.interval = server.options.reload_interval
        self._held: weakref.WeakValueDictionary[str, HeldPrompt] = weakref.WeakValueDictionary()
        self._dirs: dict[str, Path] = {}
        self._dirs_at = float("-inf")
        # The prompt whose model state (a projection) is loaded, shared by reads and
        # listings so both refuse a prompt with other state (pool._check_extras).
        self._extras_owner: list[str] = []
        self._lock = threading.Lock()
        self._listed: dict | None = None
        self._listed_signatures: dict[str, tuple] | None = None
        cache = server.backbone.prompt_cache
        if cache is not None:  # every held prompt keeps its keys and values
            cache.max_entries = max(cache.max_entries, keep + CACHE_SLACK)

    def holds(self, name: str) -> bool:
        """Whether `name` is held now (read before, not yet dropped and freed)."""
        return name in self._held

    def knows(self, name: str) -> bool:
        """Whether the directory holds a prompt directory `name` can come from (without
        reading it: a prompt refused on reading is still "known")."""
        return self._directory_of(name) is not None

    def read(self, name: str) -> HeldPrompt:
        """Read the prompt `name` from its directory.

        Raises:
            PromptMissing: no such prompt under the root.
            UserError, OSError, ValueError: its directory is refused (the message says why,
                as `GET /v1/prompts` does).
        """
        directory = self._directory_of(name)
        if directory is None:
            raise PromptMissing(name)
        path = self.root / directory
        files = signature(path)
        with self._lock:
            loaded = load_dir(path, directory, self.server.backbone, self._extras_owner)
        prompt = next((p for p in loaded if p.name == name), None)
        if prompt is None:
            raise PromptMissing(name)
        held = HeldPrompt(name, directory, prompt, files, time.monotonic())
        self._held[name] = held
        return held

    def refresh(self, held: HeldPrompt) -> ServedPrompt:
        """The held prompt as its directory holds it now, looked at once per
        `reload_interval`: read again if any file changed.

        Raises:
            PromptMissing: the directory is gone, or no longer holds the prompt.
            UserError, OSError, ValueError: the changed directory is refused.
        """
        now = time.monotonic()
        if now - held.checked_at < self.interval:
            return held.prompt
        held.checked_at = now
        path = self.root / held.directory
        if not path.is_dir():
            raise PromptMissing(held.name)
        if signature(path) != held.signature:
            fresh = self.read(held.name)
            held.prompt, held.signature = fresh.prompt, fresh.signature
            self._held[held.name] = held  # the multiplexer's object stays the one held
        return held.prompt

    def listing(self) -> dict:
        """`{"loaded": [model cards], "refused": {name: reason}}` of every prompt under the
        root, as `GET /v1/prompts` of `softprompt serve` shows them."""
        with self._lock:
            found = {name: signature(path) for name, path in prompt_dirs(self.root).items()}
            if self._listed is None or found != self._listed_signatures:
                backbone = self.server.backbone
                pool = PromptPool().rescan(self.root, backbone, self._extras_owner)
                cards = [p.card(backbone.name_or_path) for p in pool.prompts.values()]
                self._listed = {"loaded": cards, "refused": dict(pool.refused)}
                self._listed_signatures = dict(pool.signatures)
            return self._listed

    def _directory_of(self, name: str) -> str | None:
        """The directory `name` comes from (itself, or a bank's for `BANK/TASK`). The map
        of directories is walked again on a miss, at most once per `reload_interval`."""
        for again in (False, True):
            if again and time.monotonic() - self._dirs_at < self.interval:
                break
            if again or self._dirs_at == float("-inf"):
                self._dirs = prompt_dirs(self.root)
                self._dirs_at = time.monotonic()
            for candidate in (name, name.rpartition("/")[0]):
                if candidate and candidate in self._dirs:
                    return candidate
        return None
