"""The HTTP API (FastAPI): OpenAI-compatible completions, chat and models, our `predict`,
prompt reload, health and Prometheus metrics. See docs/serve.md."""

from __future__ import annotations

import json
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from softprompt.serving.engine import Answer
from softprompt.serving.errors import ApiError, BodyLimit, check_key, error_body, install_handlers
from softprompt.serving.jobs import (
    chat_input,
    image_example,
    make_jobs,
    resolve,
    run_jobs,
    stream_jobs,
    text_example,
)
from softprompt.serving.schemas import ChatRequest, CompletionRequest, PredictRequest
from softprompt.serving.server import PromptServer

COUNTED = ("/v1/completions", "/v1/chat/completions", "/v1/predict")


def create_app(server: PromptServer, manage: bool = True) -> FastAPI:
    """The app serving `server`; with `manage`, its lifespan starts and stops the server."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if manage:
            server.start()
        yield
        if manage:
            server.stop()  # the queue is answered first: requests in flight complete

    app = FastAPI(
        title="softprompt serve",
        version="1",
        summary="Many soft prompts on one frozen model, behind an OpenAI-compatible API.",
        lifespan=lifespan,
    )
    install_handlers(app)
    _count_requests(app, server)
    app.add_middleware(BodyLimit, limit=int(server.options.max_body_mb * 2**20))
    _add_routes(app, server)
    return app


def _count_requests(app: FastAPI, server: PromptServer) -> None:
    @app.middleware("http")
    async def count(request: Request, call_next):
        response = await call_next(request)
        if request.url.path in COUNTED:
            prompt = getattr(request.state, "prompt", "")
            server.metrics.requests.labels(prompt, str(response.status_code)).inc()
        return response


def _add_routes(app: FastAPI, server: PromptServer) -> None:
    def authorised(request: Request) -> None:
        check_key(request, server.options.api_key)

    guard = [Depends(authorised)]

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "prompts": len(server.pool.prompts), "queue": server.engine.depth}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(server.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=guard)
    def models() -> dict:
        return {
            "object": "list",
            "data": [_model_card(server, p) for p in server.pool.prompts.values()],
        }

    @app.get("/v1/prompts", dependencies=guard)
    def prompts() -> dict:
        return _pool_view(server)

    @app.post("/v1/prompts/reload", dependencies=guard)
    def reload() -> dict:
        server.reload()
        return _pool_view(server)

    @app.post("/v1/completions", dependencies=guard)
    async def completions(body: CompletionRequest, request: Request):
        request.state.prompt = body.model
        prompt = resolve(server, body.model)
        examples = [text_example(prompt, t, i) for i, t in enumerate(body.prompts())]
        jobs = make_jobs(server, prompt, examples, body, body.max_tokens)
        return await _respond(server, "completions", body.model, jobs, body.stream, chat=False)

    @app.post("/v1/chat/completions", dependencies=guard)
    async def chat(body: ChatRequest, request: Request):
        request.state.prompt = body.model
        prompt = resolve(server, body.model)
        tokens = body.max_completion_tokens or body.max_tokens
        jobs = make_jobs(server, prompt, [chat_input(server, prompt, body)], body, tokens)
        return await _respond(server, "chat", body.model, jobs, body.stream, chat=True)

    @app.post("/v1/predict", dependencies=guard)
    async def predict(body: PredictRequest, request: Request) -> list[dict]:
        """The records `softprompt predict` writes for the same inputs."""
        request.state.prompt = body.model
        prompt = resolve(server, body.model)
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
        return records


def _predict_example(server: PromptServer, prompt, item, index: int):
    if prompt.task_type == "text2text":
        if item.text is None:
            raise ApiError(422, f"inputs.{index}.text: a text prompt needs 'text'", "invalid_field")
        return text_example(prompt, item.text, index)
    if item.image is None:
        raise ApiError(422, f"inputs.{index}.image: an image prompt needs 'image'", "invalid_field")
    return image_example(server, prompt, item.image, item.question or "", index)


def _model_card(server: PromptServer, prompt) -> dict:
    return {
        "id": prompt.name,
        "object": "model",
        "created": int(prompt.directory.stat().st_mtime) if prompt.directory.exists() else 0,
        "owned_by": "softprompt",
        "parent": server.backbone.name_or_path,
        "root": server.backbone.name_or_path,
        "task_type": prompt.task_type,
        "num_virtual_tokens": prompt.virtual_tokens,
    }


def _pool_view(server: PromptServer) -> dict:
    loaded = [_model_card(server, p) for p in server.pool.prompts.values()]
    return {"loaded": loaded, "refused": dict(server.pool.refused)}


def _observe(server: PromptServer, endpoint: str, started: float, answers: list[Answer]) -> None:
    server.metrics.latency.labels(endpoint).observe(time.monotonic() - started)
    for answer in answers:
        server.metrics.first_token.labels(endpoint).observe(answer.first_token_s)


async def _respond(server, endpoint: str, model: str, jobs, stream: bool, chat: bool):
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    started = time.monotonic()
    if stream:
        queued = stream_jobs(server, jobs)  # a full queue is a 503 here, not an empty stream
        events = _sse(server, endpoint, queued, ident, created, model, chat, started)
        return StreamingResponse(events, media_type="text/event-stream")
    answers = await run_jobs(server, jobs)
    _observe(server, endpoint, started, answers)
    choices = [_choice(i, a, chat) for i, a in enumerate(answers)]
    kind = "chat.completion" if chat else "text_completion"
    return {"id": ident, "object": kind, "created": created, "model": model,
            "choices": choices, "usage": _usage(answers)}  # fmt: skip


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
        yield _event({**head, "choices": [opening]})
    seen_first, answers = False, []
    try:
        async for index, value in events:
            if isinstance(value, Answer):
                answers.append(value)
                choice = {"index": index, "finish_reason": value.finish}
                choice.update({"delta": {}} if chat else {"text": "", "logprobs": None})
                yield _event({**head, "choices": [choice]})
                continue
            if not seen_first:
                server.metrics.first_token.labels(endpoint).observe(time.monotonic() - started)
                seen_first = True
            piece = {"delta": {"content": value}} if chat else {"text": value, "logprobs": None}
            yield _event({**head, "choices": [{"index": index, "finish_reason": None, **piece}]})
    except ApiError as err:
        yield _event(error_body(err.status, err.message, err.code))
    server.metrics.latency.labels(endpoint).observe(time.monotonic() - started)
    yield "data: [DONE]\n\n"


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
