"""The image half of BLIP-2 / InstructBLIP: vision encoder -> Q-Former -> projection.

Mirrors `get_image_features` of transformers' `Blip2ForConditionalGeneration` and
`InstructBlipForConditionalGeneration`, split in two stages so the frozen part can be
cached: `vision_states` (pixels -> patch features) and `query_prefix` (patch features [+
instruction] -> query outputs projected into the language model's space).

InstructBLIP's Q-Former also reads the instruction text, and `QFormerPrompt` adds
learnable vectors in front of that instruction. The Q-Former's forward only takes token
ids (no `inputs_embeds`), and its `query_embeds` argument is the wrong door: everything
passed there goes through cross-attention and the query-only feed-forward layers and comes
out as query outputs. So the prompt enters where text does: N placeholder ids are put in
front of the instruction and, for the duration of one call, a forward hook on the
Q-Former's word-embedding table swaps their rows for the prompt vectors. Position
embeddings, layer norm, the attention mask handling and every layer stay upstream's code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn


class QFormerPrompt(nn.Module):
    """N learnable vectors in the Q-Former's embedding space, put before the instruction.

    Args:
        num_tokens: N.
        hidden_size: the Q-Former's hidden width H.
    """

    def __init__(self, num_tokens: int, hidden_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_tokens, hidden_size))

    @property
    def num_tokens(self) -> int:
        return self.weight.shape[0]

    @torch.no_grad()
    def initialize(self, word_embeddings: torch.Tensor, candidate_ids: list[int]) -> None:
        """Copy randomly chosen rows of the Q-Former's word embeddings (V, H).

        Real token rows start the prompt at the scale and in the region of the space the
        Q-Former was trained on, as PEFT's VOCAB-style initialisation does for text.

        Args:
            word_embeddings: (V, H) Q-Former word-embedding matrix.
            candidate_ids: ids to draw from (ordinary, non-special tokens).
        """
        ids = torch.tensor(candidate_ids or list(range(word_embeddings.shape[0])))
        pick = ids[torch.randint(len(ids), (self.num_tokens,))]
        self.weight.copy_(word_embeddings[pick].to(self.weight.dtype))

    def forward(self, batch_size: int) -> torch.Tensor:
        """The prompt repeated over the batch, (batch_size, N, H)."""
        return self.weight.unsqueeze(0).expand(batch_size, -1, -1)


@contextmanager
def _rows_replaced(embedding: nn.Embedding, rows: torch.Tensor) -> Iterator[None]:
    """While active, `embedding(ids)` returns `rows` (B, N, H) in place of its first N outputs."""
    n = rows.shape[1]

    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return torch.cat([rows.to(output.dtype), output[:, n:]], dim=1)

    handle = embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def vision_states(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Patch features of the frozen vision encoder.

    Args:
        model: a `Blip2ForConditionalGeneration` or `InstructBlipForConditionalGeneration`.
        pixel_values: (B, 3, S, S) preprocessed images.

    Returns:
        (B, 1 + patches, Hv) last hidden state (after the post layer norm), which is what
        the Q-Former cross-attends to.
    """
    return model.vision_model(pixel_values=pixel_values, return_dict=True).last_hidden_state


def query_prefix(
    model: nn.Module,
    image_embeds: torch.Tensor,
    qformer_input_ids: torch.Tensor | None = None,
    qformer_attention_mask: torch.Tensor | None = None,
    prompt: torch.Tensor | None = None,
) -> torch.Tensor:
    """Q-Former query outputs projected into the language model's space.

    Args:
        model: the BLIP-2 / InstructBLIP model.
        image_embeds: (B, 1 + patches, Hv) from `vision_states`.
        qformer_input_ids: (B, T) instruction ids (InstructBLIP); None for BLIP-2.
        qformer_attention_mask: (B, T) 1 for real instruction tokens.
        prompt: (B, N, H) Q-Former prompt put before the instruction (InstructBLIP), or None.

    Returns:
        (B, Q, D) language-model inputs, Q = `num_query_tokens`, D = LM hidden size.
    """
    qformer = model.qformer
    # BLIP-2 keeps the Q-Former (and query tokens) in float32 whatever the model's dtype.
    qdtype = model.query_tokens.dtype
    image_embeds = image_embeds.to(qdtype)
    b = image_embeds.shape[0]
    query_tokens = model.query_tokens.expand(b, -1, -1)
    num_queries = query_tokens.shape[1]
    image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
    if qformer_input_ids is None:
        if prompt is not None:
            raise ValueError("a Q-Former prompt needs an instruction-reading Q-Former")
        out = qformer(
            query_embeds=query_tokens,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
            return_dict=True,
        ).last_hidden_state
    else:
        ids = qformer_input_ids
        if qformer_attention_mask is None:
            qformer_attention_mask = torch.ones_like(ids)
        text_mask = qformer_attention_mask.to(image_mask.device)
        if prompt is not None:
            n = prompt.shape[1]
            filler = ids.new_full((b, n), qformer.config.pad_token_id or 0)
            ids = torch.cat([filler, ids], dim=1)
            text_mask = torch.cat([text_mask.new_ones(b, n), text_mask], dim=1)
        limit = qformer.config.max_position_embeddings
        if ids.shape[1] > limit:
            raise ValueError(
                f"Q-Former input of {ids.shape[1]} tokens (instruction + prompt) is over its "
                f"{limit} positions; shorten the instruction (data.max_input_length) or use "
                "fewer method.prompt_tuning.qformer_prompt_tokens"
            )
        query_mask = text_mask.new_ones(b, num_queries)
        swap = (
            _rows_replaced(qformer.get_input_embeddings(), prompt)
            if prompt is not None
            else nullcontext()
        )
        with swap:
            out = qformer(
                input_ids=ids,
                attention_mask=torch.cat([query_mask, text_mask], dim=1),
                query_embeds=query_tokens,
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=image_mask,
                return_dict=True,
            ).last_hidden_state
    query_output = out[:, :num_queries]
    projection = model.language_projection
    return projection(query_output.to(projection.weight.dtype))
