"""Cache of frozen image features: computed once per image, reused every epoch.

Everything in front of the first trainable parameter (vision encoder, and the Q-Former
when its input is fixed) gives the same output for the same image every time, so it is
computed once and kept in memory, and optionally on disk. Keys combine the image file's
content hash, the model's identity and the preprocessing, so editing an image, switching
models or changing the resolution never returns stale features.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from softprompt.data.images import image_digest


def namespace_key(**parts: object) -> str:
    """A short stable id for (model, preprocessing, ...) settings."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class FeatureCache:
    """Memory (LRU, bounded) + optional disk cache of per-image feature tensors.

    Args:
        namespace: `namespace_key(...)` of the frozen model and preprocessing.
        disk_dir: directory for `<namespace>/<key>.safetensors` files, or None.
        max_items: memory entries kept (least recently used dropped first).
        enabled: False turns the cache into a pass-through (used when something
            upstream of the features is trainable).
    """

    def __init__(
        self,
        namespace: str,
        disk_dir: str | Path | None = None,
        max_items: int = 200_000,
        enabled: bool = True,
    ) -> None:
        self.namespace = namespace
        self.disk_dir = Path(disk_dir) / namespace if disk_dir else None
        self.max_items = max_items
        self.enabled = enabled
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._digests: dict[tuple[str, int, int], str] = {}
        self.hits = 0
        self.misses = 0

    def key(self, image_path: str, extra: str = "") -> str:
        """Content hash of the file (memoised by path, size and mtime) plus `extra`."""
        stat = os.stat(image_path)
        memo = (str(image_path), stat.st_size, stat.st_mtime_ns)
        digest = self._digests.get(memo)
        if digest is None:
            digest = image_digest(image_path)
            self._digests[memo] = digest
        if extra:
            digest = hashlib.sha256(f"{digest}|{extra}".encode()).hexdigest()
        return digest

    def _get(self, key: str) -> torch.Tensor | None:
        value = self._memory.get(key)
        if value is not None:
            self._memory.move_to_end(key)
            return value
        if self.disk_dir is not None:
            path = self.disk_dir / f"{key}.safetensors"
            if path.is_file():
                try:
                    value = load_file(str(path))["features"]
                except Exception:  # a damaged cache file is recomputed, never fatal
                    return None
                self._put_memory(key, value)
                return value
        return None

    def _put_memory(self, key: str, value: torch.Tensor) -> None:
        self._memory[key] = value
        self._memory.move_to_end(key)
        while len(self._memory) > self.max_items:
            self._memory.popitem(last=False)

    def _put(self, key: str, value: torch.Tensor) -> None:
        value = value.detach().to("cpu").contiguous()
        self._put_memory(key, value)
        if self.disk_dir is not None:
            self.disk_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.disk_dir / f".{key}.{os.getpid()}.tmp"
            save_file({"features": value}, str(tmp))
            os.replace(tmp, self.disk_dir / f"{key}.safetensors")

    def features(
        self,
        image_paths: Sequence[str],
        compute: Callable[[list[int]], torch.Tensor],
        extras: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Stacked features for `image_paths`, computing only the misses.

        Args:
            image_paths: one path per batch row.
            compute: callable(indices) -> (len(indices), ...) features for those rows
                (loads, preprocesses and runs the frozen model on them).
            extras: per-row strings mixed into the key (e.g. the Q-Former instruction).

        Returns:
            (B, ...) features on the CPU, in row order.
        """
        if not self.enabled:
            return compute(list(range(len(image_paths))))
        extras = extras or [""] * len(image_paths)
        keys = [self.key(p, e) for p, e in zip(image_paths, extras, strict=True)]
        found: dict[int, torch.Tensor] = {}
        missing: list[int] = []
        for i, key in enumerate(keys):
            value = self._get(key)
            if value is None:
                missing.append(i)
            else:
                found[i] = value
        self.hits += len(found)
        self.misses += len(missing)
        if missing:
            computed = compute(missing)
            for row, i in enumerate(missing):
                self._put(keys[i], computed[row])
                found[i] = self._memory[keys[i]]
        return torch.stack([found[i] for i in range(len(keys))])
