"""Encoder-decoder language models: T5, Flan-T5, BART, ..."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoModelForSeq2SeqLM

from softprompt.backbones.base import BACKBONES, EncodeSettings
from softprompt.backbones.splice import IGNORE_INDEX
from softprompt.backbones.text_common import TextBackboneBase, pad_batch
from softprompt.data.records import TextExample


@BACKBONES.register("seq2seq")
class Seq2SeqBackbone(TextBackboneBase):
    """A frozen encoder-decoder; the prompt (and any image prefix) goes into the encoder."""

    family = "seq2seq"
    auto_class = AutoModelForSeq2SeqLM
    labels_in_input = False

    def collate(
        self, examples: list[TextExample], settings: EncodeSettings, with_targets: bool
    ) -> dict[str, torch.Tensor]:
        """Right-padded encoder inputs, plus decoder labels when `with_targets`."""
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

    def _token_losses(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        labels: torch.Tensor,
        shared_prefix: int = 0,
        groups: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The encoder attends both ways, so a shared prompt is not computed once here.
        logits = self.model(
            inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False
        ).logits
        selected = labels != IGNORE_INDEX
        losses = F.cross_entropy(logits[selected].float(), labels[selected], reduction="none")
        return losses, selected
