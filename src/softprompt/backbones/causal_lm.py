"""Decoder-only language models: GPT-2, OPT, Llama / SmolLM2, Mistral, Qwen, ..."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from softprompt.backbones.base import BACKBONES, EncodeSettings
from softprompt.backbones.text_common import (
    greedy_config,
    load_tokenizer,
    pad_batch,
    prepare_frozen,
)
from softprompt.data.records import TextExample
from softprompt.tuners.splice import IGNORE_INDEX, assemble_inputs

logger = logging.getLogger("softprompt")


@BACKBONES.register("causal_lm")
class CausalLMBackbone:
    """A frozen causal LM; the prompt goes in front of the whole token sequence.

    Training computes logits only at positions that predict a label token: the base
    transformer runs once, then the LM head is applied to the gathered hidden states.
    Over a 49k vocabulary that skips most of the head's matmul and the float32
    log-softmax over every input position.
    """

    family = "causal_lm"

    def __init__(self, model, tokenizer, name_or_path: str) -> None:
        self.model = prepare_frozen(model)
        self.tokenizer = tokenizer
        self.name_or_path = name_or_path
        cfg = model.config
        # Heads that post-process logits (soft-capping, scaling) go through the full model.
        self._softcap = getattr(cfg, "final_logit_softcapping", None)
        self._logit_scale = getattr(cfg, "logit_scale", None)

    @classmethod
    def from_pretrained(
        cls, path: str, display_name: str, dtype: torch.dtype, trust_remote_code: bool = False
    ) -> CausalLMBackbone:
        tokenizer = load_tokenizer(path, trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
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
        if not with_targets:
            return {
                "input_ids": pad_batch(inputs, tok.pad_token_id, side="left"),
                "attention_mask": pad_batch([[1] * len(r) for r in inputs], 0, side="left"),
            }
        targets = tok([e.target or "" for e in examples], add_special_tokens=False)["input_ids"]
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        rows, labels = [], []
        for src, tgt in zip(inputs, targets, strict=True):
            tgt = tgt[: settings.max_target_length - len(eos)] + eos
            rows.append(src + tgt)
            labels.append([IGNORE_INDEX] * len(src) + tgt)
        return {
            "input_ids": pad_batch(rows, tok.pad_token_id),
            "attention_mask": pad_batch([[1] * len(r) for r in rows], 0),
            "labels": pad_batch(labels, IGNORE_INDEX),
        }

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def loss_sum(
        self,
        batch: dict[str, torch.Tensor],
        prompt: torch.Tensor | None,
        prefix: torch.Tensor | None = None,
        prompt_position: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy summed over label tokens, and their count.

        Dividing the two gives exactly transformers' causal-LM loss (mean over shifted
        label tokens) for the same batch.

        Args:
            batch: right-padded `input_ids`, `attention_mask`, `labels` (B, T).
            prompt: (B, P, D) soft prompt or None.
            prefix: (B, N, D) embeddings placed before the text (image tokens) or None.
            prompt_position: index in `[prefix][text]` where the prompt goes.
        """
        embeds, mask, labels = assemble_inputs(
            prompt,
            self._embed(batch["input_ids"]),
            batch["attention_mask"],
            batch["labels"],
            prefix,
            prompt_position,
        )
        token_losses, selected = self._token_losses(embeds, mask, labels)
        return token_losses.sum(), selected.sum()

    def _token_losses(
        self, embeds: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-label-token cross-entropy (N,) and the (B, T-1) mask of where they sit."""
        targets = labels[:, 1:]
        selected = targets != IGNORE_INDEX
        if self._softcap is None and self._logit_scale is None:
            hidden = self.model.base_model(
                inputs_embeds=embeds, attention_mask=mask, use_cache=False
            ).last_hidden_state
            logits = self.model.get_output_embeddings()(hidden[:, :-1][selected])
        else:
            logits = self.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits
            logits = logits[:, :-1][selected]
        losses = F.cross_entropy(logits.float(), targets[selected], reduction="none")
        return losses, selected

    def sequence_logprobs(
        self,
        batch: dict[str, torch.Tensor],
        prompt: torch.Tensor | None,
        prefix: torch.Tensor | None = None,
        prompt_position: int = 0,
    ) -> torch.Tensor:
        """Log-probability of each row's label tokens, summed: shape (B,)."""
        embeds, mask, labels = assemble_inputs(
            prompt,
            self._embed(batch["input_ids"]),
            batch["attention_mask"],
            batch["labels"],
            prefix,
            prompt_position,
        )
        losses, selected = self._token_losses(embeds, mask, labels)
        rows = selected.nonzero()[:, 0]
        out = torch.zeros(labels.shape[0], device=losses.device, dtype=losses.dtype)
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
        """Greedy continuation ids (B, new_tokens) of left-padded inputs."""
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
