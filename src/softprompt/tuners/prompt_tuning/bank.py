"""A prompt bank: many named soft prompts over one backbone, each row picking its own.

A bank serves multi-task runs (one prompt per task, `tasks:` in the config) and prompt
ensembles (`method.prompt_tuning.ensemble: K`: K prompts for one task). Rows of one batch
may use different prompts of different lengths (`PromptInput` carries the table, the
per-row ids and the mask); a batch whose rows all use one prompt still takes the
one-prompt fast path.

On disk a bank is a directory with one ordinary prompt directory per member (PEFT's
PROMPT_TUNING format, loadable on its own: `BANK/<name>/`), the backbone's trainable
extras in `modules.safetensors`, and a `softprompt.json` listing the members, each with
the task record it was trained for, and the SHA-256 of every file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from softprompt.artifacts.bank import BankDir, read_bank_meta
from softprompt.artifacts.prompt_dir import PromptLoadError, load_prompt
from softprompt.config.run import ConfigError
from softprompt.tuners.base import SAVED_TUNERS, PromptInput
from softprompt.tuners.prompt_tuning.tuner import PromptTuner


class PromptBank:
    """Named `PromptTuner`s trained or served together.

    Args:
        members: name -> prompt, in bank order (a row's prompt id indexes this order).
        records: name -> the task record each member was trained for.
        learning_rate: the prompts' optimizer group learning rate.
        kind: "tasks" (one prompt per task) or "ensemble" (members of one task).
    """

    name = "prompt_tuning"
    adapter = "prompt"
    saved_method = "prompt_bank"

    def __init__(
        self,
        members: dict[str, PromptTuner],
        records: dict[str, dict[str, Any]] | None = None,
        learning_rate: float = 0.0,
        kind: str = "tasks",
    ) -> None:
        if not members:
            raise ValueError("a prompt bank needs at least one prompt")
        self.members = members
        self.records = records or {}
        self.learning_rate = learning_rate
        self.kind = kind
        self.trainable = any(m.trainable for m in members.values())
        self.enabled = True
        self.active: str | None = None  # the member rows use when no ids are given

    @property
    def names(self) -> list[str]:
        return list(self.members)

    def index(self, name: str) -> int:
        """The prompt id of a member.

        Raises:
            ConfigError: no such member (names the ones there are).
        """
        if name not in self.members:
            raise ConfigError(
                f"no prompt {name!r} in this bank (it has: {', '.join(self.members)})"
            )
        return self.names.index(name)

    def select(self, name: str | None) -> None:
        """Make `name` the prompt of every row when no per-row ids are given."""
        if name is not None:
            self.index(name)
        self.active = name

    def modules(self) -> dict[str, nn.Module]:
        return {
            f"{i}_{key}": module
            for i, member in enumerate(self.members.values())
            for key, module in member.modules().items()
        }

    def set_enabled(self, enabled: bool) -> None:
        self.enabled = enabled

    def named_vectors(self, key: str = "prompt_embeddings") -> dict[str, torch.Tensor]:
        """{key.<member>: (P, D)} every member's prompt, in bank order."""
        return {f"{key}.{name}": m.vectors() for name, m in self.members.items()}

    def vectors(self, name: str) -> torch.Tensor:
        """(P, D) the effective prompt of one member."""
        return self.members[name].prompt_input(1).table[0]

    def prompt_input(self, batch_size: int, ids: torch.Tensor | None = None) -> PromptInput:
        """The batch's prompts: each row's member (`ids`, (B,)), or the active one for all.

        Raises:
            ConfigError: no ids, no active member and more than one member.
        """
        if ids is None:
            name = self.active or (self.names[0] if len(self.members) == 1 else None)
            if name is None:
                raise ConfigError(
                    f"this bank has {len(self.members)} prompts ({', '.join(self.members)}): "
                    "choose one (--task NAME, or a `task` field per input record)"
                )
            return self.members[name].prompt_input(batch_size)
        first = int(ids[0])
        if bool((ids == first).all()):
            chosen = self.members[self.names[first]].prompt_input(batch_size)
            if torch.is_grad_enabled() and len(self.members) > 1:
                chosen.table = chosen.table + 0.0 * self._all_vectors_sum(first)
            return chosen
        return stack_prompts([self.vectors(n) for n in self.names], ids)

    def _all_vectors_sum(self, skip: int) -> torch.Tensor:
        """A zero-weighted link from every other member to the loss: data-parallel
        training needs each trainable parameter in every step's graph, even when this
        process's rows all used one prompt."""
        others = [self.vectors(n).sum() for i, n in enumerate(self.names) if i != skip]
        return torch.stack(others).sum()

    def save(self, directory: Path, context: dict[str, Any]) -> None:
        """Every member as a prompt directory, the extras, and the bank's manifest."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, member in self.members.items():
            own = {**context, "extra": None, "task": self.records.get(name, context.get("task"))}
            member.save(directory / name, own)
        extras = context.get("extra") or {}
        BankDir.write(directory, self.names, self.records, self.kind, context, extras)

    def load(self, directory: Path) -> None:
        for name, member in self.members.items():
            member.load(Path(directory) / name)


def stack_prompts(vectors: list[torch.Tensor], ids: torch.Tensor) -> PromptInput:
    """A `PromptInput` over prompts of possibly different lengths (padded at their end)."""
    longest = max(v.shape[0] for v in vectors)
    table = torch.stack([F.pad(v, (0, 0, 0, longest - v.shape[0])) for v in vectors])
    mask = torch.zeros(len(vectors), longest, dtype=torch.long, device=table.device)
    for k, v in enumerate(vectors):
        mask[k, : v.shape[0]] = 1
    return PromptInput(table, ids.to(table.device), mask)


@SAVED_TUNERS.register("prompt_bank")
def load_saved_bank(backbone, bundle, adapter) -> PromptBank:
    """A saved bank, frozen, on the backbone's device."""
    from softprompt.artifacts.prompt_dir import check_compatible

    meta = read_bank_meta(adapter.path)
    device = backbone.word_embeddings().device
    members, records = {}, {}
    for name, entry in meta["members"].items():
        loaded = load_prompt(Path(adapter.path) / name)
        check_compatible(loaded, backbone)
        members[name] = PromptTuner.from_weight(loaded.weight.to(device))
        records[name] = entry.get("task") or {}
    return PromptBank(members, records, kind=str(meta.get("kind", "tasks")))


def build_bank(config, backbone) -> PromptBank:
    """The bank a config asks for: one prompt per `tasks:` entry, or `ensemble` members."""
    from softprompt.config.multitask import task_specs

    pt, t = config.method.prompt_tuning, config.training
    if config.tasks:
        members = {
            s.name: _task_prompt(s, backbone, t.learning_rate, t.seed + s.index)
            for s in task_specs(config)
        }
        return PromptBank(members, {}, t.learning_rate, "tasks")
    members = {
        f"member{k}": _ensemble_member(pt, backbone, t.learning_rate, t.seed + k, k)
        for k in range(pt.ensemble)
    }
    return PromptBank(members, {}, t.learning_rate, "ensemble")


def _task_prompt(spec, backbone, learning_rate: float, seed: int) -> PromptTuner:
    """A task's prompt: initialised as configured, or from a trained prompt (init_from)."""
    pt = spec.config.method.prompt_tuning
    if spec.init_from is None:
        return PromptTuner.for_backbone(pt, backbone, learning_rate, seed)
    from softprompt.artifacts.prompt_dir import check_compatible

    where = f"tasks[{spec.index}] ({spec.name}).init_from"
    if pt.reparameterize in ("mlp", "lstm"):
        raise ConfigError(
            f"{where}: a P-tuning encoder ({pt.reparameterize}) starts from noise, not from "
            "prompt vectors; use reparameterize none or residual with init_from"
        )
    source = Path(spec.init_from)
    if BankDir.detect(source):
        raise ConfigError(f"{where}: {source} is a bank; name one of its prompts: {source}/<task>")
    try:
        loaded = load_prompt(source)
        check_compatible(loaded, backbone)
    except PromptLoadError as err:
        raise ConfigError(f"{where}: {err}") from None
    length = loaded.weight.shape[0]
    if spec.prompt_length is not None and spec.prompt_length != length:
        raise ConfigError(
            f"{where}: {source} holds {length} prompt vectors, the task asks for "
            f"num_virtual_tokens {spec.prompt_length}; drop one of the two"
        )
    tuner = PromptTuner.for_backbone(
        pt.model_copy(update={"num_virtual_tokens": length, "init_method": "RANDOM"}),
        backbone,
        learning_rate,
        seed,
    )
    with torch.no_grad():
        tuner.weight.copy_(loaded.weight.to(tuner.weight.device, tuner.weight.dtype))
    return tuner


def _ensemble_member(pt, backbone, learning_rate: float, seed: int, k: int) -> PromptTuner:
    """Member k of an ensemble: its own seed; TEXT-initialised members beyond the first
    get noise (half the vocabulary's spread), else they would all train identically."""
    tuner = PromptTuner.for_backbone(pt, backbone, learning_rate, seed)
    if pt.init_method == "TEXT" and k > 0:
        spread = float(backbone.word_embeddings().detach().float().std())
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(tuner.weight.shape, generator=generator) * (0.5 * spread)
        with torch.no_grad():
            tuner.weight.add_(noise.to(tuner.weight.device, tuner.weight.dtype))
    return tuner
