"""Encoder-decoder language models: T5, Flan-T5, BART, ..."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoModelForSeq2SeqLM

from softprompt.backbones.base import BACKBONES, EncodeSettings
from softprompt.backbones.text_common import (
    greedy_config,
    load_tokenizer,
    pad_batch,
    prepare_frozen,
)
from softprompt.data.records import TextExample
from softprompt.tuners.splice import IGNORE_INDEX, assemble_inputs


@BACKBONES.register("seq2seq")
class Seq2SeqBackbone:
    """A frozen encoder-decoder; the prompt goes in front of the encoder input."""

    family = "seq2seq"

    def __init__(self, model, tokenizer, name_or_path: str) -> None:
        self.model = prepare_frozen(model)
        self.tokenizer = tokenizer
        self.name_or_path = name_or_path

    @classmethod
    def from_pretrained(
        cls, path: str, display_name: str, dtype: torch.dtype, trust_remote_code: bool = False
    ) -> Seq2SeqBackbone:
        tokenizer = load_tokenizer(path, trust_remote_code)
        model = AutoModelForSeq2SeqLM.from_pretrained(
            path, dtype=dtype, trust_remote_code=trust_remote_code
        )
        return cls(model, tokenizer, display_name)

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    def word_embeddings(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight

    def collate(
        self, examples: list[TextExample], settings: EncodeSettings, with_targets: bool
    ) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        inputs = tok(
            [e.input for e in examples], truncation=True, max_length=settings.max_input_length
        )["input_ids"]
        batch = {
            "input_ids": pad_batch(inputs, tok.pad_token_id),
            "attention_mask": pad_batch([[1] * len(r) for r in inputs], 0),
        }
        if with_targets:
            targets = tok(
                text_target=[e.target or "" for e in examples],
                truncation=True,
                max_length=settings.max_target_length,
            )["input_ids"]
            batch["labels"] = pad_batch(targets, IGNORE_INDEX)
        return batch

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def loss_sum(
        self,
        batch: dict[str, torch.Tensor],
        prompt: torch.Tensor | None,
        prefix: torch.Tensor | None = None,
        prompt_position: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy summed over decoder label tokens, and their count.

        The prompt (and any `prefix`, e.g. image query tokens) goes into the encoder.
        """
        embeds, mask, _ = assemble_inputs(
            prompt,
            self._embed(batch["input_ids"]),
            batch["attention_mask"],
            None,
            prefix,
            prompt_position,
        )
        losses, selected = self._token_losses(embeds, mask, batch["labels"])
        return losses.sum(), selected.sum()

    def _token_losses(
        self, embeds: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(
            inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False
        ).logits
        selected = labels != IGNORE_INDEX
        losses = F.cross_entropy(logits[selected].float(), labels[selected], reduction="none")
        return losses, selected

    def sequence_logprobs(
        self,
        batch: dict[str, torch.Tensor],
        prompt: torch.Tensor | None,
        prefix: torch.Tensor | None = None,
        prompt_position: int = 0,
    ) -> torch.Tensor:
        """Log-probability of each row's label tokens, summed: shape (B,)."""
        embeds, mask, _ = assemble_inputs(
            prompt,
            self._embed(batch["input_ids"]),
            batch["attention_mask"],
            None,
            prefix,
            prompt_position,
        )
        losses, selected = self._token_losses(embeds, mask, batch["labels"])
        rows = selected.nonzero()[:, 0]
        out = torch.zeros(selected.shape[0], device=losses.device, dtype=losses.dtype)
        return -out.index_add(0, rows, losses)

    @torch.no_grad()
    def generate_ids(
        self,
        batch: dict[str, torch.Tensor],
        prompt: torch.Tensor | None,
        max_new_tokens: int,
        prefix: torch.Tensor | None = None,
        prompt_position: int = 0,
    ) -> torch.Tensor:
        embeds, mask, _ = assemble_inputs(
            prompt,
            self._embed(batch["input_ids"]),
            batch["attention_mask"],
            None,
            prefix,
            prompt_position,
        )
        config = greedy_config(self.model, self.tokenizer, max_new_tokens)
        return self.model.generate(
            inputs_embeds=embeds, attention_mask=mask, generation_config=config
        )

    def generate(
        self,
        batch: dict[str, torch.Tensor],
        prompt: torch.Tensor | None,
        max_new_tokens: int,
        prefix: torch.Tensor | None = None,
        prompt_position: int = 0,
    ) -> list[str]:
        ids = self.generate_ids(batch, prompt, max_new_tokens, prefix, prompt_position)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
