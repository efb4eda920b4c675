"""The prefix as a key/value cache: its shape per model, PEFT's layout, and the hook feeding it.

PEFT keeps a prefix as one (N, layers * 2 * token_dim) table: row n holds, layer after
layer, the n-th virtual token's key and then its value (`token_dim` = key/value heads x
head width). Its `get_prompt` cuts that table into per-layer keys and values and hands them
to the model as `past_key_values`, with the attention mask lengthened by N ones; the text's
positions then start at N. `cache_from_table` does the same cut, so the same table gives the
same keys and values here and in PEFT.

The language model is not wrapped. A forward pre-hook on the module that owns the layers (a
causal LM's base model, a seq2seq model's decoder) puts the prefix in front of whatever the
backbone passes: a fresh call gets a cache holding the prefix, a call that continues a cache
(the next generation step, the rest of a shared soft prompt's rows) gets its mask
lengthened. Training, option scoring and generation thus all see the prefix, and switching
the hook off gives the bare model.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, EncoderDecoderCache

from softprompt.config.run import ConfigError


@dataclass(frozen=True)
class PrefixShape:
    """Where a prefix goes in one language model.

    Attributes:
        num_layers: attention layers that get a prefix (the decoder's, for seq2seq).
        kv_heads: key/value heads per layer (fewer than query heads with grouped queries).
        head_dim: width of one head.
        submodules: 1 for decoder-only models, 2 for encoder-decoders (PEFT's
            `num_transformer_submodules`).
    """

    num_layers: int
    kv_heads: int
    head_dim: int
    submodules: int

    @property
    def token_dim(self) -> int:
        """Width of one layer's keys (PEFT's `token_dim`)."""
        return self.kv_heads * self.head_dim

    @property
    def table_width(self) -> int:
        """Columns of the prefix table: every layer's key and value."""
        return self.num_layers * 2 * self.token_dim


def prefix_shape(text_config: Any, seq2seq: bool) -> PrefixShape:
    """The prefix geometry of a language model's config (the text config of a VLM).

    Matches what PEFT derives (`_prepare_prompt_learning_config`), including grouped-query
    attention, but reads the head width from the config where it has one (T5's `d_kv`,
    `head_dim`), so models whose heads are not hidden_size / heads wide get it right.

    Raises:
        ConfigError: a model whose layers or heads cannot be read, or a seq2seq model whose
            decoder depth differs from its encoder's (PEFT sizes the prefix by the encoder).
    """
    try:
        layers = int(text_config.num_hidden_layers)
        heads = int(text_config.num_attention_heads)
        hidden = int(getattr(text_config, "hidden_size", None) or text_config.d_model)
    except (AttributeError, TypeError):
        raise ConfigError(
            f"method.prefix_tuning: cannot read the layer and head counts of a "
            f"{getattr(text_config, 'model_type', '?')!r} model"
        ) from None
    kv_heads = int(getattr(text_config, "num_key_value_heads", None) or heads)
    head_dim = getattr(text_config, "head_dim", None) or getattr(text_config, "d_kv", None)
    head_dim = int(head_dim or hidden // heads)
    if seq2seq:
        decoder_layers = getattr(text_config, "num_decoder_layers", None) or layers
        if decoder_layers != layers:
            raise ConfigError(
                f"method.prefix_tuning: this model has {layers} encoder and {decoder_layers} "
                "decoder layers; PEFT's prefix layout needs them equal"
            )
    return PrefixShape(layers, kv_heads, head_dim, 2 if seq2seq else 1)


def cache_from_table(
    table: torch.Tensor,
    batch_size: int,
    shape: PrefixShape,
    text_config: Any,
    into: DynamicCache | None = None,
) -> DynamicCache:
    """The self-attention cache holding a prefix, laid out as PEFT's `get_prompt` does.

    For encoder-decoders PEFT doubles the table and gives decoder layer i the i-th group of
    four slices (self-attention key and value, cross-attention key and value); it then
    drops the cross-attention part (the cross-attention cache starts empty), so only the
    decoder's self-attention sees a prefix. The same slices are taken here.

    Args:
        table: (N, layers * 2 * token_dim) the prefix, in the model's dtype.
        batch_size: B, rows it is shared by (expanded, not copied).
        shape: the model's `PrefixShape`.
        text_config: passed to `DynamicCache` (sliding-window layers and the like).
        into: an empty cache to fill (the one `generate` made) instead of a new one.

    Returns:
        The `DynamicCache` whose layer i holds keys and values of shape (B, kv_heads, N, head_dim).
    """
    n = table.shape[0]
    kv = table.view(1, n, shape.num_layers * 2, shape.kv_heads, shape.head_dim)
    if shape.submodules == 2:
        kv = torch.cat([kv, kv], dim=2)
    # (slices, 1, heads, N, head_dim), then PEFT's groups of 2 (decoder-only) or 4 slices.
    groups = kv.permute(2, 0, 3, 1, 4).split(shape.submodules * 2)
    cache = DynamicCache(config=text_config) if into is None else into
    for layer, group in enumerate(groups):
        key = group[0].expand(batch_size, -1, -1, -1)
        value = group[1].expand(batch_size, -1, -1, -1)
        cache.update(key, value, layer)
    return cache


def _bound_kwargs(
    signature: inspect.Signature, args: tuple, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """A call's arguments as keywords (some models pass `input_ids` positionally)."""
    if not args:
        return dict(kwargs)
    out: dict[str, Any] = {}
    for name, value in signature.bind_partial(*args, **kwargs).arguments.items():
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        else:
            out[name] = value
    return out


class PrefixHook:
    """A forward pre-hook that puts a prefix in front of a language model's attention.

    Args:
        target: the module owning the attention layers (called with `past_key_values`,
            `attention_mask` and `position_ids` keywords).
        table: returns the (N, layers * 2 * token_dim) prefix in a given dtype.
        num_tokens: N.
        shape: the model's `PrefixShape`.
        text_config: the language model's config.
    """

    def __init__(
        self,
        target: nn.Module,
        table: Callable[[torch.dtype], torch.Tensor],
        num_tokens: int,
        shape: PrefixShape,
        text_config: Any,
    ) -> None:
        self.table = table
        self.num_tokens = num_tokens
        self.shape = shape
        self.text_config = text_config
        self.enabled = True
        if any(isinstance(h, PrefixHook) for h in target._forward_pre_hooks.values()):
            raise ValueError(f"{type(target).__name__} already takes a prefix; one per model")
        self._signature = inspect.signature(target.forward)
        self._handle = target.register_forward_pre_hook(self, with_kwargs=True)

    def remove(self) -> None:
        self._handle.remove()

    def __call__(
        self, module: nn.Module, args: tuple, kwargs: dict[str, Any]
    ) -> tuple[tuple, dict[str, Any]] | None:
        if not self.enabled:
            return None
        kw = _bound_kwargs(self._signature, args, kwargs)
        ref = kw.get("inputs_embeds")
        ref = kw.get("input_ids") if ref is None else ref
        if ref is None:
            return None
        rows, length = ref.shape[0], ref.shape[1]
        n = self.num_tokens
        cache = kw.get("past_key_values")
        past = cache.get_seq_length() if cache is not None else 0
        if past == 0:
            kw["past_key_values"] = self._fresh_cache(module, cache, rows, ref)
            past = n
        mask = kw.get("attention_mask")
        # Masks count the text only (the caller knows nothing of the prefix): one that is
        # exactly N short gets N ones in front, as PEFT does in forward and generate.
        if (
            isinstance(mask, torch.Tensor)
            and mask.dim() == 2
            and mask.shape[1] == past + length - n
        ):
            ones = mask.new_ones(rows, n)
            kw["attention_mask"] = torch.cat([ones, mask], dim=1)
        if kw.get("position_ids") is not None:
            kw["position_ids"] = kw["position_ids"] + n  # PEFT shifts given positions by N
        return (), kw

    def _fresh_cache(self, module: nn.Module, cache: Any, rows: int, ref: torch.Tensor):
        """The prefix in a cache: the empty one `generate` passed (filled in place, as it
        keeps a reference) or a new one."""
        table = self.table(_compute_dtype(module, ref))
        if self.shape.submodules == 1:
            into = cache if isinstance(cache, DynamicCache) else None
            return cache_from_table(table, rows, self.shape, self.text_config, into)
        # Cross-attention keys come from this call's encoder output, as in PEFT.
        if isinstance(cache, EncoderDecoderCache):
            into = cache.self_attention_cache
            if isinstance(into, DynamicCache):
                cache_from_table(table, rows, self.shape, self.text_config, into)
                return cache
        prefix = cache_from_table(table, rows, self.shape, self.text_config)
        return EncoderDecoderCache(prefix, DynamicCache(config=self.text_config))


def _compute_dtype(module: nn.Module, ref: torch.Tensor) -> torch.dtype:
    """The dtype keys are computed in: autocast's when it is on, else the embeddings'."""
    device = ref.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    if ref.is_floating_point():
        return ref.dtype
    return module.get_input_embeddings().weight.dtype
