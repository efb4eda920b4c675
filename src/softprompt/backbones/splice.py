"""The one place where soft prompts enter a model's input.

Prompts arrive as a `PromptInput` (a table of prompts, per-row prompt ids and a mask of
real prompt positions); a (B, P, D) tensor is read as per-row prompts.
"""

from __future__ import annotations

import torch

from softprompt.backbones.prompt_input import PromptInput

IGNORE_INDEX = -100


def as_prompt_input(prompt: PromptInput | torch.Tensor | None) -> PromptInput | None:
    """A `PromptInput` from either form (None stays None)."""
    if prompt is None or isinstance(prompt, PromptInput):
        return prompt
    return PromptInput.from_rows(prompt)


def splice_prompt(
    prompt: PromptInput | torch.Tensor | None,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None = None,
    position: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Insert prompt vectors into a batch of embedded inputs.

    Args:
        prompt: the batch's prompts (or a (B, P, D) tensor of per-row prompts), or None
            (returns the inputs unchanged). Padding positions of shorter prompts get
            attention mask 0.
        inputs_embeds: (B, T, D) embedded tokens (or image+text embeddings).
        attention_mask: (B, T) 1 for real positions.
        labels: (B, T) token ids or IGNORE_INDEX; None at inference.
        position: index in T before which the prompt goes (0 = in front of everything).

    Returns:
        inputs_embeds (B, P+T, D), attention_mask (B, P+T) with ones on the prompt, and
        labels (B, P+T) with IGNORE_INDEX on the prompt (or None).
    """
    prompt = as_prompt_input(prompt)
    if prompt is None:
        return inputs_embeds, attention_mask, labels
    b, p = prompt.batch_size, prompt.length
    if b != inputs_embeds.shape[0] or prompt.width != inputs_embeds.shape[2]:
        raise ValueError(
            f"prompts of {b} rows x width {prompt.width} do not fit inputs "
            f"{tuple(inputs_embeds.shape)}"
        )
    rows = prompt.rows().to(inputs_embeds.dtype)
    embeds = torch.cat([inputs_embeds[:, :position], rows, inputs_embeds[:, position:]], dim=1)
    real = prompt.row_mask().to(attention_mask.device, attention_mask.dtype)
    mask = torch.cat([attention_mask[:, :position], real, attention_mask[:, position:]], dim=1)
    if labels is not None:
        ignore = labels.new_full((b, p), IGNORE_INDEX)
        labels = torch.cat([labels[:, :position], ignore, labels[:, position:]], dim=1)
    return embeds, mask, labels


def assemble_inputs(
    prompt: PromptInput | torch.Tensor | None,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None = None,
    prefix: torch.Tensor | None = None,
    prompt_position: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Full model input: `[prefix][text]` with the prompt spliced in.

    Args:
        prefix: (B, N, D) non-text embeddings that go before the text (image query
            tokens, projected vision features), or None.
        prompt_position: where the prompt goes inside `[prefix][text]`: 0 puts it in
            front of everything (before the image), N right after the prefix (before the
            text).

    Returns:
        inputs_embeds, attention_mask and labels (prefix and prompt positions ignored).
        Without labels (generation), padding is moved to the front of each row, so every
        row ends with a real token for generation to continue from: a left-padded text
        behind a prefix/prompt would otherwise leave its pads in the middle, or at the
        end when the text is empty. With labels, the padding of prompts shorter than
        their batch's longest is moved to the end of each row, so every row's real
        positions are numbered exactly as when the row runs with its prompt alone.
    """
    if prefix is not None:
        b, n = prefix.shape[0], prefix.shape[1]
        inputs_embeds = torch.cat([prefix.to(inputs_embeds.dtype), inputs_embeds], dim=1)
        attention_mask = torch.cat([attention_mask.new_ones(b, n), attention_mask], dim=1)
        if labels is not None:
            labels = torch.cat([labels.new_full((b, n), IGNORE_INDEX), labels], dim=1)
    embeds, mask, labels = splice_prompt(
        prompt, inputs_embeds, attention_mask, labels, position=prompt_position
    )
    if labels is None:
        embeds, mask = left_align_padding(embeds, mask)
    elif prompt is not None and not bool(as_prompt_input(prompt).mask.all()):
        embeds, mask, labels = right_align_padding(embeds, mask, labels)
    return embeds, mask, labels


def right_align_padding(
    embeds: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Move masked positions to the end of each row, keeping real positions in order.

    Prompt padding in the middle of a row would shift the positions of the text behind
    it; at the end it is invisible (causal attention never looks forward, and padding is
    masked for bidirectional encoders). Labels move with their positions.
    """
    order = torch.sort((mask == 0).long(), dim=1, stable=True).indices
    embeds = torch.gather(embeds, 1, order.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
    return embeds, torch.gather(mask, 1, order), torch.gather(labels, 1, order)


def left_align_padding(
    embeds: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move masked positions to the front of each row, keeping real positions in order."""
    if bool(mask[:, -1].all()) and bool((mask.diff(dim=1) >= 0).all()):
        return embeds, mask  # already left-padded (or no padding)
    # Stable sort on the mask puts zeros first without reordering the ones.
    order = torch.sort(mask.long(), dim=1, stable=True).indices
    embeds = torch.gather(embeds, 1, order.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
    return embeds, torch.gather(mask, 1, order)


def shared_prompt_length(prompt: PromptInput | torch.Tensor | None, prompt_position: int) -> int:
    """How many leading positions are provably the same in every row: the prompt's length
    when it goes in front of everything and every row uses the same, fully real prompt;
    else 0."""
    prompt = as_prompt_input(prompt)
    if prompt is None or prompt_position != 0 or not prompt.is_single:
        return 0
    return prompt.length


def prompt_groups(
    prompt: PromptInput | torch.Tensor | None, prompt_position: int
) -> tuple[int, torch.Tensor | None]:
    """Leading positions shared within groups of rows, and each row's group.

    Rows that use the same fully real prompt in front of everything share its positions
    (under a causal mask they attend only to each other), so a backbone may compute each
    group's prompt once. Returns (prompt length, None) when every row is one group,
    (prompt length, (B,) group index 0..G-1) when a bank's prompts of one length lead the
    rows, and (0, None) when nothing is shared (prompts of different lengths, a prompt
    after the image, a different prompt in every row, no prompt).
    """
    shared = shared_prompt_length(prompt, prompt_position)
    if shared:
        return shared, None
    prompt = as_prompt_input(prompt)
    if prompt is None or prompt_position != 0 or not bool(prompt.mask.all()):
        return 0, None
    # Groups are distinct prompt ids, numbered by first appearance.
    distinct, groups = torch.unique(prompt.ids, return_inverse=True)
    if distinct.numel() == prompt.batch_size:
        return 0, None  # a prompt per row: nothing to share
    return prompt.length, groups
