"""Greedy generation that starts from a soft prompt's keys and values, computed once.

When fully real prompts lead the rows of a causal LM's input (prompt position 0: in front
of the text, or of the image tokens of a composed / BLIP-2 OPT model), the prompt's
positions attend only to each other under the causal mask, so their keys and values are
the same in every row that uses that prompt, and in every batch. `PromptKVCache` runs a
prompt once at batch 1 (`use_cache=True`), keeps its keys and values, and generation starts
every row from them: the cache is expanded over the batch and each row goes on as

    [prompt (cached)][left pads][rest of the row]

with attention mask 0 on the pads. `generate` numbers positions by the mask's cumulative
sum, so the rest sits at positions P, P+1, ... exactly as in the full, left-padded input
`[pads][prompt][rest]`; greedy tokens are those of generation without reuse (the logits
differ only by the float rounding of batch-1 against batch-B matrix products). Rows of a
bank batch that use a few prompts of one length start from their own prompt's entry.

Entries are kept across calls and batches. They are found by the prompt's values (compared
exactly, so a training step, a reloaded prompt or a reparameterised prompt recomputed with
the same values all do the right thing) and by the language model's state: the identity,
storage and version counter of every parameter and buffer (an optimizer step or
`load_state_dict` bumps the counter), the LoRA layers' switches, the forward hooks, the
keys and values of an active prefix tuner (compared exactly) and the autocast dtype. Writes through `tensor.data`
bypass version counters: call `clear()` after them.

Prefix tuning composes exactly: its hook puts the prefix in front of the prompt when the
prompt's keys and values are computed (an entry holds `[prefix][prompt]`), and on later
calls lengthens the masks and shifts the positions as it does in plain generation.

Nothing is reused (generation runs as without this module) for seq2seq language models
(T5 / Flan-T5, BLIP-2 / InstructBLIP with T5): their encoder attends both ways, so the
prompt's encoder states depend on the text behind it. Nor for a prompt after the image
tokens, prompts of different lengths or a different prompt in every row, a model with a
module in training mode (dropout), cache layers other than plain dynamic ones (sliding
windows), a generation config with a static cache or chunked prefill, or a batch with a row
that has no token behind the prompt.
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import DynamicCache, GenerationConfig
from transformers.cache_utils import DynamicLayer

from softprompt.backbones.prefix_cache import PrefixHook
from softprompt.backbones.prompt_input import PromptInput
from softprompt.backbones.splice import as_prompt_input, prompt_groups

# Prompts kept per model: a bank's prompts all fit; each entry is layers x 2 x (1, H, P, d).
MAX_ENTRIES = 16

Layers = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class ReusePlan:
    """A batch whose generation can start from cached prompt keys and values.

    Attributes:
        table: (G, P, D) the prompts the rows use, in the embeddings' dtype.
        groups: (B,) each row's prompt in `table`, or None when one prompt serves all rows.
        rows: B.
    """

    table: torch.Tensor
    groups: torch.Tensor | None
    rows: int


@dataclass
class _Entry:
    prompt: torch.Tensor  # (P, D) the values the keys and values were computed from
    state: tuple
    prefixes: tuple[torch.Tensor, ...]  # active prefix tuners' keys and values
    layers: Layers  # per layer (1, kv_heads, prefix + P, head_dim)


class PromptKVCache:
    """Prompt keys and values of one causal language model, reused by generation.

    Attributes:
        enabled: False generates as without reuse (for comparisons).
        keep: False recomputes the prompt's keys and values once per `generate` call
            instead of keeping them across calls.
        hits / misses: prompt lookups served from the cache / computed.
    """

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self.enabled = True
        self.keep = True
        self.hits = 0
        self.misses = 0
        self._entries: list[_Entry] = []  # least recently used first
        self._lock = threading.Lock()  # servers may generate from several threads

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()

    def plan(
        self,
        model: nn.Module,
        prompt: PromptInput | torch.Tensor | None,
        prompt_position: int,
        config: GenerationConfig,
        dtype: torch.dtype,
    ) -> ReusePlan | None:
        """A `ReusePlan` when this batch's prompts lead every row and the model allows
        reuse (see the module docstring), else None.

        Args:
            model: the causal LM (`generate` and `base_model`).
            prompt: the batch's prompts.
            prompt_position: where the prompt goes in `[prefix][text]`.
            config: the generation settings.
            dtype: of the input embeddings (the prompt is cast to it, as in splicing).
        """
        if not self.enabled or prompt is None:
            return None
        if config.cache_implementation is not None or getattr(config, "prefill_chunk_size", None):
            return None
        # Positions come from the attention mask only where the model takes position ids.
        if "position_ids" not in inspect.signature(model.forward).parameters:
            return None
        if any(m.training for m in model.modules()):
            return None
        shared, groups = prompt_groups(prompt, prompt_position)
        if not shared:
            return None
        prompt = as_prompt_input(prompt)
        if groups is None:
            table = prompt.table[:1]
        else:
            # The prompts in group order: prompt_groups numbers sorted distinct ids.
            table = prompt.table[torch.unique(prompt.ids)]
        return ReusePlan(table.to(dtype), groups, prompt.batch_size)

    @torch.no_grad()
    def generate(
        self,
        model: nn.Module,
        plan: ReusePlan,
        rest_embeds: torch.Tensor,
        rest_mask: torch.Tensor,
        config: GenerationConfig,
        extra: dict | None = None,
    ) -> torch.Tensor | None:
        """Greedy ids (B, new_tokens) of `[prompt][rest]`, or None where reuse cannot hold.

        Args:
            model: the causal LM.
            plan: from `plan`.
            rest_embeds: (B, T, D) what follows the prompt in each row, padding in front.
            rest_mask: (B, T) 1 at real positions.
            config: generation settings.
            extra: more keyword arguments of `generate` (a stopping criteria list).
        """
        if rest_embeds.shape[1] == 0 or not bool(rest_mask[:, -1].all()):
            return None  # a row with nothing after the prompt has no token to continue from
        per_prompt = self._lookup(model, plan.table, rest_embeds)
        if per_prompt is None:
            return None
        cache = _batch_cache(per_prompt, plan.groups, plan.rows)
        rows, width, past = plan.rows, rest_embeds.shape[2], cache.get_seq_length()
        # `generate` takes the whole sequence and skips the first `past` positions (the
        # cache's length, a prefix tuner's positions included); the mask counts the prompt
        # and the rest (a prefix hook adds its own ones in front).
        embeds = torch.cat([rest_embeds.new_zeros(rows, past, width), rest_embeds], dim=1)
        mask = torch.cat([rest_mask.new_ones(rows, plan.table.shape[1]), rest_mask], dim=1)
        return model.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            past_key_values=cache,
            generation_config=config,
            **(extra or {}),
        )

    def _lookup(
        self, model: nn.Module, table: torch.Tensor, ref: torch.Tensor
    ) -> list[Layers] | None:
        """Each prompt's per-layer keys and values (1, H, L, d), from the cache or computed;
        None when the model's cache cannot be reused."""
        state = model_state(model)
        if state is not None:
            # Keys computed under autocast are in its dtype: never served to a plain call.
            state = (*state, torch.is_autocast_enabled(ref.device.type), compute_dtype(ref))
        prefixes, prefix_tokens = active_prefixes(model, compute_dtype(ref))
        found: list[Layers | None] = [None] * table.shape[0]
        if state is not None and self.keep:
            with self._lock:
                for g in range(table.shape[0]):
                    found[g] = self._find(table[g], state, prefixes)
        missing = [g for g, layers in enumerate(found) if layers is None]
        self.hits += len(found) - len(missing)
        self.misses += len(missing)
        if missing:
            computed = prompt_layers(model, table[missing], table.shape[1] + prefix_tokens)
            if computed is None:
                return None
            for j, g in enumerate(missing):
                found[g] = [(k[j : j + 1], v[j : j + 1]) for k, v in computed]
                if state is not None and self.keep:
                    with self._lock:
                        self._store(_Entry(table[g].clone(), state, prefixes, found[g]))
        return found

    def _find(
        self, prompt: torch.Tensor, state: tuple, prefixes: tuple[torch.Tensor, ...]
    ) -> Layers | None:
        for i, entry in enumerate(self._entries):
            if (
                entry.state == state
                and _same(entry.prompt, prompt)
                and len(entry.prefixes) == len(prefixes)
                and all(_same(a, b) for a, b in zip(entry.prefixes, prefixes, strict=True))
            ):
                self._entries.append(self._entries.pop(i))  # most recently used last
                return entry.layers
        return None

    def _store(self, entry: _Entry) -> None:
        self._entries.append(entry)
        # Entries of an older model state can never match again.
        self._entries = [e for e in self._entries if e.state == entry.state]
        del self._entries[: max(0, len(self._entries) - self.max_entries)]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Exactly the same values (and shape, dtype, device)."""
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


def model_state(model: nn.Module) -> tuple | None:
    """What the keys and values of a fixed input depend on besides the prompt: every
    parameter's and buffer's identity, storage and version counter, the LoRA layers'
    switches and the forward hooks; None where version counters are not kept (tensors
    made under `torch.inference_mode`)."""
    try:
        tensors = tuple(
            (id(t), t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers())
        )
    except RuntimeError:
        return None
    switches = tuple(
        (m.disable_adapters, tuple(m.active_adapters), tuple(m.merged_adapters))
        for m in model.modules()
        if isinstance(m, BaseTunerLayer)
    )
    hooks = tuple(
        (id(h), getattr(h, "enabled", None))
        for m in model.modules()
        for h in (*m._forward_pre_hooks.values(), *m._forward_hooks.values())
    )
    return tensors, switches, hooks


def active_prefixes(model: nn.Module, dtype: torch.dtype) -> tuple[tuple[torch.Tensor, ...], int]:
    """The keys and values of the model's enabled prefix tuners (their hooks put them in
    front of every fresh call), and how many positions they add."""
    hooks = [
        h
        for m in model.modules()
        for h in m._forward_pre_hooks.values()
        if isinstance(h, PrefixHook) and h.enabled
    ]
    return tuple(h.table(dtype).detach() for h in hooks), sum(h.num_tokens for h in hooks)


def compute_dtype(ref: torch.Tensor) -> torch.dtype:
    """The dtype a model computes in: autocast's when it is on, else the inputs'."""
    device = ref.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else ref.dtype


def prompt_layers(model: nn.Module, prompts: torch.Tensor, length: int) -> Layers | None:
    """Per-layer keys and values (M, H, length, d) of `prompts` (M, P, D) run alone.

    Returns None unless every layer is a plain dynamic cache layer holding `length`
    positions (sliding windows would drop positions the full input keeps).
    """
    out = model.base_model(inputs_embeds=prompts, use_cache=True)
    cache = out.past_key_values
    if not isinstance(cache, DynamicCache) or not cache.layers:
        return None
    if any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    if any(layer.get_seq_length() != length for layer in cache.layers):
        return None
    return [(layer.keys, layer.values) for layer in cache.layers]


def _batch_cache(per_prompt: list[Layers], groups: torch.Tensor | None, rows: int) -> DynamicCache:
    """A cache of B rows: one prompt's keys and values expanded, or each row's group's."""
    if groups is None:
        layers = [
            (k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in per_prompt[0]
        ]
    else:
        layers = [
            (
                torch.cat([p[i][0] for p in per_prompt])[groups],
                torch.cat([p[i][1] for p in per_prompt])[groups],
            )
            for i in range(len(per_prompt[0]))
        ]
    return DynamicCache(layers)
