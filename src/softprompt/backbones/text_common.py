"""Pieces the text families share: padding, generation settings, loading."""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import AutoTokenizer, GenerationConfig

from softprompt.backbones.base import BackboneBase, freeze
from softprompt.backbones.decoding import GREEDY, Decoding
from softprompt.backbones.prompt_cache import PromptKVCache
from softprompt.backbones.prompt_input import PromptInput
from softprompt.backbones.splice import assemble_inputs, prompt_groups

logger = logging.getLogger("softprompt")


def pad_batch(rows: list[list[int]], pad_value: int, side: str = "right") -> torch.Tensor:
    """Pad lists of ids to one (B, T) tensor on the given side."""
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), pad_value, dtype=torch.long)
    for i, row in enumerate(rows):
        if not row:
            continue
        if side == "right":
            out[i, : len(row)] = torch.tensor(row)
        else:
            out[i, width - len(row) :] = torch.tensor(row)
    return out


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """Load a tokenizer and make sure it can pad (falls back to EOS, as most recipes do)."""
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer of {path!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def greedy_config(model: Any, tokenizer, max_new_tokens: int) -> GenerationConfig:
    """Greedy decoding, whatever sampling settings the checkpoint ships with."""
    config = GenerationConfig.from_model_config(model.config)
    if getattr(model, "generation_config", None) is not None:
        config = GenerationConfig(**model.generation_config.to_dict())
    config.do_sample = False
    config.num_beams = 1
    config.temperature = None
    config.top_p = None
    config.top_k = None
    config.max_new_tokens = max_new_tokens
    config.max_length = None
    config.pad_token_id = tokenizer.pad_token_id
    if config.eos_token_id is None:
        config.eos_token_id = tokenizer.eos_token_id
    return config


def prepare_frozen(model: torch.nn.Module) -> torch.nn.Module:
    """Eval-mode-agnostic freeze; dropout follows train()/eval() like any HF model."""
    freeze(model)
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    return model


class TextBackboneBase(BackboneBase):
    """What causal and seq2seq backbones share: input assembly, losses, generation.

    Subclasses set `family`, `auto_class` and `labels_in_input` (causal LMs read their
    labels as part of the input sequence; seq2seq models feed them to the decoder), and
    implement `collate` and `_token_losses`.
    """

    family = "text"
    auto_class: Any = None
    labels_in_input = True

    def __init__(self, model, tokenizer, name_or_path: str) -> None:
        self.model = prepare_frozen(model)
        self.tokenizer = tokenizer
        self.name_or_path = name_or_path
        # Generation starts from a leading prompt's cached keys and values in causal LMs.
        # Not in seq2seq models: their encoder attends both ways, so the prompt's encoder
        # states depend on the text behind it.
        self.prompt_kv = PromptKVCache() if self.labels_in_input else None

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        display_name: str,
        dtype: torch.dtype,
        trust_remote_code: bool = False,
        quantization_config: Any = None,
    ):
        """Load a checkpoint (with `quantization_config`: bitsandbytes-quantized, QLoRA)."""
        tokenizer = load_tokenizer(path, trust_remote_code)
        extra = {"quantization_config": quantization_config} if quantization_config else {}
        model = cls.auto_class.from_pretrained(
            path, dtype=dtype, trust_remote_code=trust_remote_code, **extra
        )
        return cls(model, tokenizer, display_name)

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    def word_embeddings(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight

    @property
    def lm(self) -> TextBackboneBase:
        """A text backbone reads its input itself (PEFT wraps `self.model`)."""
        return self

    def _assemble(
        self,
        batch: dict[str, torch.Tensor],
        prompt: PromptInput | None,
        prefix: torch.Tensor | None,
        prompt_position: int,
        with_labels: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        labels = batch["labels"] if with_labels and self.labels_in_input else None
        embeds, mask, labels = assemble_inputs(
            prompt,
            self.model.get_input_embeddings()(batch["input_ids"]),
            batch["attention_mask"],
            labels,
            prefix,
            prompt_position,
        )
        if with_labels and not self.labels_in_input:
            labels = batch["labels"]
        return embeds, mask, labels

    def _token_losses(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        labels: torch.Tensor,
        shared_prefix: int = 0,
        groups: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-label-token cross-entropy (N,) and the boolean mask of where they sit.

        `shared_prefix`: leading positions that are the same in every row (a backbone may
        compute them once), or within each group of rows when `groups` (B,) is given."""
        raise NotImplementedError

    def loss_sum(
        self,
        batch: dict[str, torch.Tensor],
        prompt: PromptInput | None,
        prefix: torch.Tensor | None = None,
        prompt_position: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy summed over label tokens, and their count.

        Dividing the two gives exactly transformers' loss (mean over label tokens) for
        the same batch.

        Args:
            batch: right-padded `input_ids`, `attention_mask`, `labels` (B, T).
            prompt: the batch's soft prompts, or None.
            prefix: (B, N, D) embeddings placed before the text (image tokens) or None.
            prompt_position: index in `[prefix][text]` where the prompt goes.
        """
        embeds, mask, labels = self._assemble(batch, prompt, prefix, prompt_position, True)
        shared, groups = prompt_groups(prompt, prompt_position)
        losses, selected = self._token_losses(embeds, mask, labels, shared, groups)
        return losses.sum(), selected.sum()

    def sequence_logprobs(
        self,
        batch: dict[str, torch.Tensor],
        prompt: PromptInput | None,
        prefix: torch.Tensor | None = None,
        prompt_position: int = 0,
    ) -> torch.Tensor:
        """Log-probability of each row's label tokens, summed: shape (B,)."""
        embeds, mask, labels = self._assemble(batch, prompt, prefix, prompt_position, True)
        shared, groups = prompt_groups(prompt, prompt_position)
        losses, selected = self._token_losses(embeds, mask, labels, shared, groups)
        rows = selected.nonzero()[:, 0]
        out = torch.zeros(selected.shape[0], device=losses.device, dtype=losses.dtype)
        return -out.index_add(0, rows, losses)

    @torch.no_grad()
    def generate_ids(
        self,
        batch: dict[str, torch.Tensor],
        prompt: PromptInput | None,
        max_new_tokens: int,
        prefix: torch.Tensor | None = None,
        prompt_position: int = 0,
        decoding: Decoding = GREEDY,
    ) -> torch.Tensor:
        """Continuation ids (B, new_tokens) of left-padded inputs (greedy by default).

        A prompt leading every row starts generation from its cached keys and values
        (see `softprompt.backbones.prompt_cache`); the tokens are the same either way.
        """
        config = greedy_config(self.model, self.tokenizer, max_new_tokens)
        extra = decoding.apply(config)
        reuse = None
        # Reuse continues from the row's last token: a batch of empty inputs has none.
        if self.prompt_kv is not None and batch["input_ids"].shape[1] > 0:
            dtype = self.model.get_input_embeddings().weight.dtype
            reuse = self.prompt_kv.plan(self.model, prompt, prompt_position, config, dtype)
        if reuse is not None:
            rest, rest_mask, _ = self._assemble(batch, None, prefix, 0, False)
            ids = self.prompt_kv.generate(self.model, reuse, rest, rest_mask, config, extra)
            if ids is not None:
                return ids
        embeds, mask, _ = self._assemble(batch, prompt, prefix, prompt_position, False)
        return self.model.generate(
            inputs_embeds=embeds, attention_mask=mask, generation_config=config, **extra
        )

    def generate(
        self,
        batch: dict[str, torch.Tensor],
        prompt: PromptInput | None,
        max_new_tokens: int,
        prefix: torch.Tensor | None = None,
        prompt_position: int = 0,
        decoding: Decoding = GREEDY,
    ) -> list[str]:
        """Generation (greedy by default); returns the new text only."""
        ids = self.generate_ids(batch, prompt, max_new_tokens, prefix, prompt_position, decoding)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
