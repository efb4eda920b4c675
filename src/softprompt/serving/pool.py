"""The prompts a server answers with: every prompt under a directory, on one frozen model.

A prompt directory, a bundle whose only adapter is a soft prompt, and a multi-task bank
are served; their names are their paths relative to the directory (a bank's tasks are
`NAME/TASK`). What cannot share the one frozen model is refused with its reason (kept in
`refused` and logged once) while the rest goes on being served:

- a prompt trained on another base model (family or fingerprint differ);
- a bundle with LoRA, prefix or full fine-tuning (they change the shared model itself);
- an ensemble bank (its members answer every request together, not one prompt);
- a prompt carrying trainable model state (a composed model's projection) that differs
  from the state loaded from the first such prompt.

A pool is immutable: `PromptPool.rescan` gives a new pool, and requests keep the entry
they were resolved against, so a prompt removed while its requests wait is still there
for them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from softprompt.artifacts.bundle import read_bundle
from softprompt.artifacts.manifest import META_FILE
from softprompt.errors import UserError
from softprompt.inference.loaded import plan_for, tuners_from_bundle
from softprompt.inference.plan import Route

logger = logging.getLogger("softprompt.serve")

# Files whose presence makes a directory a saved prompt (ours, or PEFT's adapter config).
MARKERS = (META_FILE, "adapter_config.json")


@dataclass(frozen=True)
class ServedPrompt:
    """One servable prompt.

    Attributes:
        name: what clients put in `model` (`DIR`-relative path; `BANK/TASK` for a task).
        route: the task it answers (template, classes, lengths, record).
        vectors: (P, D) the prompt, on the model's device.
        directory: where it was read from.
    """

    name: str
    route: Route
    vectors: torch.Tensor
    directory: Path

    @property
    def task_type(self) -> str:
        return self.route.task.type

    @property
    def virtual_tokens(self) -> int:
        return int(self.vectors.shape[0])

    def card(self, base_model: str) -> dict:
        """Its entry in `GET /v1/models`: OpenAI's model fields and two of ours."""
        return {
            "id": self.name,
            "object": "model",
            "created": int(self.directory.stat().st_mtime) if self.directory.exists() else 0,
            "owned_by": "softprompt",
            "parent": base_model,
            "root": base_model,
            "task_type": self.task_type,
            "num_virtual_tokens": self.virtual_tokens,
        }


@dataclass(frozen=True)
class PromptPool:
    """The served prompts by name, the refused directories with their reasons, and the
    signature of every directory as it was read (to notice changes)."""

    prompts: dict[str, ServedPrompt] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    signatures: dict[str, tuple] = field(default_factory=dict)

    def get(self, name: str) -> ServedPrompt | None:
        return self.prompts.get(name)

    def rescan(self, root: Path, backbone: Any, extras_owner: list[str]) -> PromptPool:
        """The pool as `root` holds it now: changed or new directories read again,
        vanished ones dropped, unchanged ones kept as they are.

        Args:
            extras_owner: [name] of the prompt whose model state is loaded ([] if none);
                updated in place when a first prompt with such state loads.
        """
        found = {name: signature(path) for name, path in prompt_dirs(root).items()}
        prompts = {n: p for n, p in self.prompts.items() if _dir_name(n, found) in found}
        refused = {n: r for n, r in self.refused.items() if n in found}
        for name, sig in found.items():
            if self.signatures.get(name) == sig:
                continue
            prompts = {n: p for n, p in prompts.items() if _dir_name(n, found) != name}
            refused.pop(name, None)
            try:
                loaded = load_dir(root / name, name, backbone, extras_owner)
            except (UserError, OSError, ValueError) as err:
                refused[name] = str(err)
                logger.warning("prompt %s refused: %s", name, err)
                continue
            prompts.update({p.name: p for p in loaded})
            logger.info("prompt %s loaded (%s)", name, ", ".join(p.name for p in loaded))
        for gone in set(self.signatures) - set(found):
            logger.info("prompt %s removed", gone)
        return PromptPool(dict(sorted(prompts.items())), refused, found)


def _dir_name(prompt_name: str, dirs: dict[str, Any]) -> str:
    """The directory a served name comes from (a bank task's name is `DIR/TASK`)."""
    if prompt_name in dirs:
        return prompt_name
    return prompt_name.rsplit("/", 1)[0]


def prompt_dirs(root: Path) -> dict[str, Path]:
    """Saved prompts under `root` by relative name (POSIX), not descending into one.

    Hidden entries (`.tmp-x`, a copy in progress under a dot name) are skipped.
    """
    out: dict[str, Path] = {}
    for current, dirs, files in os.walk(root):
        path = Path(current)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if path != root and any(m in files for m in MARKERS):
            out[path.relative_to(root).as_posix()] = path
            dirs[:] = []  # a bundle's adapter directories belong to it
    return out


def signature(directory: Path) -> tuple:
    """Names, sizes and modification times of every file below `directory`."""
    entries = []
    for current, _, files in os.walk(directory):
        for name in files:
            try:
                stat = os.stat(os.path.join(current, name))
            except OSError:
                continue  # removed while scanning: the next scan sees the rest
            entries.append((os.path.join(current, name), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


def load_dir(directory: Path, name: str, backbone: Any, extras_owner: list[str]) -> list:
    """The servable prompts of one saved directory (several for a bank).

    Raises:
        UserError: it cannot share the frozen model (the message says why).
    """
    bundle = read_bundle(directory)
    others = sorted(set(bundle.adapters) - {"prompt"})
    if others:
        raise UserError(
            f"{directory}: has {', '.join(others)} adapters besides a prompt; they change the "
            "frozen model every prompt shares (serve it alone with `softprompt predict`)"
        )
    if "prompt" not in bundle.adapters:
        raise UserError(f"{directory}: holds no soft prompt")
    _check_named_base(bundle, directory, backbone)
    _check_extras(bundle.extras, name, backbone, extras_owner)
    tuners = tuners_from_bundle(bundle, backbone)
    prompt = tuners.prompt
    if prompt.kind == "ensemble":
        raise UserError(
            f"{directory}: an ensemble bank answers each request with all its members; "
            "serve its members as separate prompts"
        )
    plan = plan_for(tuners, bundle.task)
    vectors = prompt.named_vectors()
    if prompt.kind == "single":
        route = replace(plan.routes[next(iter(plan))], name=name)
        return [ServedPrompt(name, route, _frozen(vectors["prompt_embeddings"]), directory)]
    return [
        ServedPrompt(
            f"{name}/{task}", replace(plan.routes[task], prompt_id=None), _frozen(v), directory
        )
        for task, v in zip(plan.names, (prompt.vectors(t) for t in plan.names), strict=True)
    ]


def _frozen(vectors: torch.Tensor) -> torch.Tensor:
    return vectors.detach().clone().requires_grad_(False)


def _check_named_base(bundle, directory: Path, backbone: Any) -> None:
    """Without a fingerprint, a recorded base model must be the one served."""
    recorded = bundle.base_model
    if bundle.meta.get("fingerprint") or not recorded or recorded == backbone.name_or_path:
        return
    raise UserError(
        f"{directory}: trained on {recorded}, this server runs {backbone.name_or_path} "
        "(and the prompt has no fingerprint that shows they are the same model)"
    )


def _check_extras(extras: dict, name: str, backbone: Any, owner: list[str]) -> None:
    """Trainable model state (a projection) must be the one every served prompt shares."""
    if not extras:
        return
    current = backbone.state_for_save()
    if owner and not all(
        k in current and torch.equal(current[k].cpu(), v.cpu()) for k, v in extras.items()
    ):
        raise UserError(
            f"prompt {name}: trained with its own model state ({', '.join(sorted(extras))}), "
            f"different from that of {owner[0]}, already serving; run it on its own server"
        )
    if not owner:
        owner.append(name)
