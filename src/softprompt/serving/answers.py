"""What the HTTP API answers, on one `PromptServer`: completions, chat, `predict` records,
and the prompt listing. `softprompt serve` answers with these functions in its own
process, and so does every replica of `softprompt serve --ray` (serving/ray_app.py); the
routes around them are in serving/app.py."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softprompt.serving.engine import Answer
from softprompt.serving.errors import ApiError, error_body
from softprompt.serving.jobs import (
    chat_input,
    image_example,
    make_jobs,
    resolve,
    run_jobs,
    stream_jobs,
    text_example,
)
from softprompt.serving.pool import ServedPrompt
from softprompt.serving.schemas import ChatRequest, CompletionRequest, PredictRequest
from softprompt.serving.server import PromptServer

# The endpoints that answer inputs, by the name metrics and `answer` use.
ENDPOINTS = ("completions", "chat", "predict")


@dataclass(frozen=True)
class Answered:
    """A route's answer: a JSON body, or server-sent events (their inputs already queued,
    so a full queue was a 503 before the first event), with headers to add.

    Attributes:
        body: the JSON answer (None when `events` is set).
        events: the `data: ...` lines of a stream, `[DONE]` last.
        headers: extra response headers (the Ray ingress says which replica answered).
        first_token_s: seconds from arrival to each input's first token (non-streamed).
    """

    body: Any = None
    events: AsyncIterator[str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    first_token_s: tuple[float, ...] = ()


async def answer(
    server: PromptServer, endpoint: str, body: Any, prompt: ServedPrompt | None = None
) -> Answered:
    """The answer to one request of `endpoint` ("completions", "chat" or "predict").

    Args:
        prompt: the prompt the request names, when the caller holds it already (a Ray
            replica's lazily read prompt); None resolves `body.model` in the server's pool.

    Raises:
        ApiError: no such prompt (404), a bad input (400), a full queue (503).
    """
    prompt = prompt if prompt is not None else resolve(server, body.model)
    if endpoint == "completions":
        return await _complete(server, prompt, body)
    if endpoint == "chat":
        return await _chat(server, prompt, body)
    if endpoint == "predict":
        return await _predict(server, prompt, body)
    raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {ENDPOINTS}")


async def _complete(server: PromptServer, prompt: ServedPrompt, body: CompletionRequest):
    examples = [text_example(prompt, t, i) for i, t in enumerate(body.prompts())]
    jobs = make_jobs(server, prompt, examples, body, body.max_tokens)
    return await _respond(server, "completions", body.model, jobs, body.stream, chat=False)


async def _chat(server: PromptServer, prompt: ServedPrompt, body: ChatRequest):
    tokens = body.max_completion_tokens or body.max_tokens
    jobs = make_jobs(server, prompt, [chat_input(server, prompt, body)], body, tokens)
    return await _respond(server, "chat", body.model, jobs, body.stream, chat=True)


async def _predict(server: PromptServer, prompt: ServedPrompt, body: PredictRequest):
    """The records `softprompt predict` writes for the same inputs."""
    examples = [_predict_example(server, prompt, item, i) for i, item in enumerate(body.inputs)]
    jobs = make_jobs(server, prompt, examples, None, body.max_new_tokens)
    started = time.monotonic()
    answers = await run_jobs(server, jobs)
    _observe(server, "predict", started, answers)
    records = [a.record for a in answers]
    for record, item in zip(records, body.inputs, strict=True):
        if prompt.task_type == "text2text":  # as `predict --text` writes them
            record["input"] = item.text
        elif "image" in record:  # the image by content, never the server's own path
            record["image"] = f"sha256:{Path(record['image']).name}"
    return Answered(records, first_token_s=tuple(a.first_token_s for a in answers))


def _predict_example(server: PromptServer, prompt, item, index: int):
    if prompt.task_type == "text2text":
        if item.text is None:
            raise ApiError(422, f"inputs.{index}.text: a text prompt needs 'text'", "invalid_field")
        return text_example(prompt, item.text, index)
    if item.image is None:
        raise ApiError(422, f"inputs.{index}.image: an image prompt needs 'image'", "invalid_field")
    return image_example(server, prompt, item.image, item.question or "", index)


def pool_view(server: PromptServer) -> dict:
    """`GET /v1/prompts`: the served prompts' model cards and the refused directories."""
    base = server.backbone.name_or_path
    loaded = [p.card(base) for p in server.pool.prompts.values()]
    return {"loaded": loaded, "refused": dict(server.pool.refused)}


def _observe(server: PromptServer, endpoint: str, started: float, answers: list[Answer]) -> None:
    server.metrics.latency.labels(endpoint).observe(time.monotonic() - started)
    for one in answers:
        server.metrics.first_token.labels(endpoint).observe(one.first_token_s)


async def _respond(server, endpoint: str, model: str, jobs, stream: bool, chat: bool):
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    started = time.monotonic()
    if stream:
        queued = stream_jobs(server, jobs)  # a full queue is a 503 here, not an empty stream
        return Answered(events=_sse(server, endpoint, queued, ident, created, model, chat, started))
    answers = await run_jobs(server, jobs)
    _observe(server, endpoint, started, answers)
    choices = [_choice(i, a, chat) for i, a in enumerate(answers)]
    kind = "chat.completion" if chat else "text_completion"
    body = {"id": ident, "object": kind, "created": created, "model": model,
            "choices": choices, "usage": _usage(answers)}  # fmt: skip
    return Answered(body, first_token_s=tuple(a.first_token_s for a in answers))


def _choice(index: int, answer: Answer, chat: bool) -> dict:
    if chat:
        message = {"role": "assistant", "content": answer.text}
        return {"index": index, "message": message, "finish_reason": answer.finish}
    return {"index": index, "text": answer.text, "finish_reason": answer.finish, "logprobs": None}


def _usage(answers: list[Answer]) -> dict:
    prompt = sum(a.prompt_tokens for a in answers)
    completion = sum(a.completion_tokens for a in answers)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def _sse(server, endpoint, events, ident, created, model, chat, started):
    """OpenAI's server-sent events: a chunk per new piece of text, a last chunk per
    choice with its finish reason, then `[DONE]`."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    head = {"id": ident, "object": kind, "created": created, "model": model}
    if chat:  # OpenAI opens a chat stream with the assistant's role
        opening = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        yield sse_event({**head, "choices": [opening]})
    seen_first = False
    try:
        async for index, value in events:
            if isinstance(value, Answer):
                choice = {"index": index, "finish_reason": value.finish}
                choice.update({"delta": {}} if chat else {"text": "", "logprobs": None})
                yield sse_event({**head, "choices": [choice]})
                continue
            if not seen_first:
                server.metrics.first_token.labels(endpoint).observe(time.monotonic() - started)
                seen_first = True
            piece = {"delta": {"content": value}} if chat else {"text": value, "logprobs": None}
            yield sse_event({**head, "choices": [{"index": index, "finish_reason": None, **piece}]})
    except ApiError as err:
        yield sse_event(error_body(err.status, err.message, err.code))
    server.metrics.latency.labels(endpoint).observe(time.monotonic() - started)
    yield SSE_DONE


SSE_DONE = "data: [DONE]\n\n"


def sse_event(payload: dict) -> str:
    """One server-sent event holding `payload` as JSON."""
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
