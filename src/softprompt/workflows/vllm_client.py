"""Requests for a vLLM server from an exported soft prompt (`export --format vllm-prompt-embeds`).

vLLM's OpenAI-compatible server (`vllm serve MODEL --enable-prompt-embeds`) takes the input
of a `/v1/completions` request as embeddings: `prompt_embeds` is the base64 text of
`torch.save` of a (seq_len, hidden_size) tensor. `VllmPromptClient` builds that tensor for
a request exactly as our splice builds a causal LM's input in `softprompt predict`:

    [soft prompt (P, D); token embeddings of the templated text (T, D)]

Usage::

    client = VllmPromptClient.load("exported/")      # loads the base model's embeddings
    body = client.request_body("We propose a parser that ...", max_tokens=48)
    requests.post("http://127.0.0.1:8000/v1/completions", json=body)

The client needs the export directory and the base model (the one the export records, or
`model=`): it loads the base model once through the same `from_pretrained` path as
`predict`, checks its fingerprint against the export's, and keeps only the tokenizer and the
input-embedding layer.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from softprompt.artifacts.prompt_dir import check_base_model
from softprompt.artifacts.vllm_embeds import PromptEmbedsExport, VllmEmbedsDir
from softprompt.backbones.causal_lm import input_token_ids
from softprompt.backbones.loading import load_backbone
from softprompt.backbones.prompt_input import PromptInput
from softprompt.backbones.splice import assemble_inputs
from softprompt.data.text import record_input
from softprompt.errors import UserError

__all__ = [
    "VllmPromptClient",
    "completion_request",
    "decode_prompt_embeds",
    "encode_prompt_embeds",
]


def encode_prompt_embeds(embeds: torch.Tensor) -> str:
    """The `prompt_embeds` value vLLM reads: base64 (standard alphabet) of `torch.save`.

    Args:
        embeds: (seq_len, hidden_size) embeddings.
    """
    buffer = io.BytesIO()
    # A contiguous copy: torch.save writes a view's whole storage, not just the view.
    torch.save(embeds.detach().cpu().contiguous().clone(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_prompt_embeds(data: str) -> torch.Tensor:
    """The tensor of a `prompt_embeds` value (tensors only: weights_only runs no code)."""
    raw = base64.b64decode(data, validate=True)
    return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)


@dataclass
class VllmPromptClient:
    """Builds vLLM `/v1/completions` bodies that carry an exported soft prompt.

    Long-lived: load it once, then build many bodies; it does not change after loading.

    Attributes:
        export: the exported prompt and its manifest.
        embedding: the base model's input-embedding layer (in the export's dtype).
        tokenizer: the base model's tokenizer.
    """

    export: PromptEmbedsExport
    embedding: nn.Module
    tokenizer: Any

    @classmethod
    def load(cls, directory: str | Path, model: str | None = None) -> VllmPromptClient:
        """Read an export and load its base model's tokenizer and embedding layer.

        Args:
            directory: what `softprompt export --format vllm-prompt-embeds` wrote.
            model: the base model (a hub id or a local checkpoint directory); default the
                one the export records.

        Raises:
            PromptLoadError: the export is missing or damaged, or `model` is not the base
                model the prompt was trained on (its fingerprint differs).
        """
        export = VllmEmbedsDir.read(directory)
        dtype = export.meta["dtype"]
        backbone = load_backbone(model or export.base_model, export.meta["family"], dtype)
        check_base_model(export.meta, export.directory, backbone)
        # Only the embedding layer is kept; the rest of the model is freed with `backbone`.
        embedding = backbone.lm.model.get_input_embeddings().eval()
        return cls(export, embedding, backbone.tokenizer)

    @property
    def served_model(self) -> str:
        """The `model` a body names by default: the checkpoint the export records, the
        name `vllm serve CHECKPOINT` serves it under."""
        return str(self.export.meta.get("checkpoint") or self.export.base_model)

    def input_text(self, text: str | None = None, fields: dict[str, Any] | None = None) -> str:
        """The text the model reads: `text`, or the input field of `fields`, through the
        task's template, as `predict --text` / `predict --input` read them.

        Raises:
            UserError: neither or both given; DataError: a field the template needs is
                missing.
        """
        if (text is None) == (fields is None):
            raise UserError("give the request's text or its input fields (one of them)")
        spec = self.export.input
        field = spec["input_field"]
        record = {field: text} if fields is None else fields
        return record_input(record, field, spec["template"])

    @torch.no_grad()
    def prompt_embeds(
        self, text: str | None = None, fields: dict[str, Any] | None = None
    ) -> torch.Tensor:
        """(P + T, D) the input embeddings of one request, in the export's dtype: what our
        splice feeds the model for the same input in `predict`."""
        ids = input_token_ids(
            self.tokenizer, [self.input_text(text, fields)], self.export.input["max_input_length"]
        )
        input_ids = torch.tensor(ids, dtype=torch.long)
        tokens = self.embedding(input_ids)
        prompt = PromptInput.single(self.export.prompt, 1)
        embeds, _, _ = assemble_inputs(
            prompt,
            tokens,
            torch.ones_like(input_ids),
            prompt_position=self.export.prompt_position,
        )
        return embeds[0]

    def request_body(
        self,
        text: str | None = None,
        *,
        fields: dict[str, Any] | None = None,
        model: str | None = None,
        max_tokens: int | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """A `/v1/completions` body for `vllm serve MODEL --enable-prompt-embeds`.

        Args:
            text: the request's text (the task's template is applied), or
            fields: its input fields (the template may name several).
            model: the name the server serves the base model under (default:
                `served_model`).
            max_tokens: generation length (default: the task's `max_new_tokens`).
            **params: more fields of the body (`temperature`, `stop`, ...).

        Returns:
            {"model", "prompt_embeds", "max_tokens", "temperature": 0.0 (greedy, as
            `predict`), **params}.
        """
        body: dict[str, Any] = {
            "model": model or self.served_model,
            "prompt_embeds": encode_prompt_embeds(self.prompt_embeds(text, fields)),
            "max_tokens": max_tokens or self.export.max_new_tokens,
            "temperature": 0.0,
        }
        body.update(params)
        return body


def completion_request(
    directory: str | Path,
    text: str | None = None,
    *,
    fields: dict[str, Any] | None = None,
    model: str | None = None,
    base_model: str | None = None,
    **params: Any,
) -> dict[str, Any]:
    """One `/v1/completions` body (loads the base model each call: for many requests, keep
    a `VllmPromptClient`).

    Args:
        base_model: where to load the base model from (default: the export's record).
        model, **params: see `VllmPromptClient.request_body`.
    """
    client = VllmPromptClient.load(directory, base_model)
    return client.request_body(text, fields=fields, model=model, **params)
