"""Decoder-only language models: GPT-2, OPT, Llama / SmolLM2, Mistral, Qwen, ..."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from softprompt.backbones.base import BACKBONES, EncodeSettings
from softprompt.backbones.splice import IGNORE_INDEX
from softprompt.backbones.text_common import TextBackboneBase, pad_batch
from softprompt.data.records import TextExample


@BACKBONES.register("causal_lm")
class CausalLMBackbone(TextBackboneBase):
    """A frozen causal LM; the prompt goes in front of the whole token sequence.

    Training computes logits only at positions that predict a label token: the base
    transformer runs once, then the LM head is applied to the gathered hidden states.
    Over a 49k vocabulary that skips most of the head's matmul and the float32
    log-softmax over every input position.

    When the prompt leads every row (it is the same tensor for all of them), its positions
    are computed once instead of once per row (once per prompt when rows use a bank's
    prompts of one length): under the causal mask they attend only to
    each other, so their keys and values are the same in every row. The prompt runs at
    batch 1, its key/value cache is repeated over the batch, and the rest of each row runs
    on top of it. The result is the full forward's, to float rounding, and the gradient
    reaches the prompt through the cache. For an 11-token prompt in front of ~20-token
    rows (the easy-VQA demo) a training step takes a fifth less time.
    """

    family = "causal_lm"
    auto_class = AutoModelForCausalLM
    labels_in_input = True

    def __init__(self, model, tokenizer, name_or_path: str) -> None:
        super().__init__(model, tokenizer, name_or_path)
        cfg = model.config
        # Heads that post-process logits (soft-capping, scaling) go through the full model.
        self._softcap = getattr(cfg, "final_logit_softcapping", None)
        self._logit_scale = getattr(cfg, "logit_scale", None)

    def collate(
        self, examples: list[TextExample], settings: EncodeSettings, with_targets: bool
    ) -> dict[str, torch.Tensor]:
        """Inputs with targets appended (right-padded), or inputs alone (left-padded)."""
        tok = self.tokenizer
        inputs = input_token_ids(tok, [e.input for e in examples], settings.max_input_length)
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

    def _token_losses(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        labels: torch.Tensor,
        shared_prefix: int = 0,
        groups: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-label-token cross-entropy (N,) and the (B, T-1) mask of where they sit.

        `shared_prefix` leading positions are the same in every row, or within each group
        of rows when `groups` (B,) numbers them (see the class doc).
        """
        targets = labels[:, 1:]
        selected = targets != IGNORE_INDEX
        if is_right_padded(mask):
            # Pads only at row ends: no real token attends to one under the causal mask,
            # and positions count from 0 either way, so the mask changes nothing but
            # blocks attention's fused causal path (~8% of a training step).
            mask = None
        if self._softcap is None and self._logit_scale is None:
            # Gradient checkpointing turns the KV cache off in training, so it recomputes
            # the prompt per row like the plain path.
            checkpointing = self.model.is_gradient_checkpointing and self.model.training
            if (
                mask is None
                and not checkpointing
                and 0 < shared_prefix < embeds.shape[1]
                and embeds.shape[0] > 1
            ):
                hidden = self._hidden_over_shared_prefix(embeds, shared_prefix, groups)
            else:
                hidden = self.model.base_model(
                    inputs_embeds=embeds, attention_mask=mask, use_cache=False
                ).last_hidden_state
            logits = self.model.get_output_embeddings()(hidden[:, :-1][selected])
        else:
            logits = self.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits
            logits = logits[:, :-1][selected]
        losses = F.cross_entropy(logits.float(), targets[selected], reduction="none")
        return losses, selected

    def _hidden_over_shared_prefix(
        self, embeds: torch.Tensor, shared: int, groups: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Last hidden states (B, T, D) of unpadded rows whose first `shared` positions
        match across all rows, or within each group of rows (`groups`: (B,) in 0..G-1)."""
        rows = embeds.shape[0]
        if groups is None:
            heads = embeds[:1, :shared]
        else:
            # The first row of each group stands for the group.
            first = torch.full((int(groups.max()) + 1,), rows, device=groups.device)
            first = first.scatter_reduce(
                0, groups, torch.arange(rows, device=groups.device), "amin"
            )
            heads = embeds[first, :shared]
        head = self.model.base_model(inputs_embeds=heads, use_cache=True)
        cache = head.past_key_values
        # Indexing copies (and back-propagates into) each group's keys and values.
        if groups is None:
            cache.batch_repeat_interleave(rows)
            head_hidden = head.last_hidden_state.expand(rows, -1, -1)
        else:
            cache.batch_select_indices(groups)
            head_hidden = head.last_hidden_state[groups]
        tail = self.model.base_model(
            inputs_embeds=embeds[:, shared:], past_key_values=cache, use_cache=True
        ).last_hidden_state
        return torch.cat([head_hidden, tail], dim=1)


def input_token_ids(tokenizer, texts: list[str], max_input_length: int) -> list[list[int]]:
    """The token ids a causal LM reads for each input text, before the soft prompt goes in
    front: special tokens (BOS, ...) as the tokenizer adds them, truncated to
    `max_input_length`. `collate` and the vLLM prompt-embeds client both tokenize here, so a
    client's input is exactly the one `predict` feeds the model."""
    return tokenizer(texts, truncation=True, max_length=max_input_length)["input_ids"]


def is_right_padded(mask: torch.Tensor) -> bool:
    """True when every row of a (B, T) attention mask is ones followed by zeros."""
    return bool((mask.diff(dim=1) <= 0).all()) and bool(mask[:, 0].all())
