"""The HTTP API (FastAPI): OpenAI-compatible completions, chat and models, our `predict`,
prompt reload, health and Prometheus metrics. See docs/serve.md.

The routes answer through a `Backend`: `LocalBackend` is one process's `PromptServer`
(`softprompt serve`); serving/ray_app.py's backend forwards each request to the Ray
replica that holds its prompt (`softprompt serve --ray`). Both get these same routes,
request schemas, guards and error answers.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any, Protocol

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from softprompt.serving.answers import Answered, answer, pool_view
from softprompt.serving.errors import BodyLimit, check_key, install_handlers
from softprompt.serving.metrics import ServerMetrics
from softprompt.serving.schemas import ChatRequest, CompletionRequest, PredictRequest
from softprompt.serving.server import PromptServer, ServeOptions

COUNTED = ("/v1/completions", "/v1/chat/completions", "/v1/predict")


class Backend(Protocol):
    """What the routes answer from.

    Attributes:
        options: the server's settings (API key, body limit) read by the guards.
        metrics: the registry `GET /metrics` renders; requests are counted into it.
    """

    options: ServeOptions
    metrics: ServerMetrics

    def start(self) -> None: ...

    def stop(self) -> None: ...

    async def health(self) -> dict:
        """`{"status": "ok", "prompts": N, "queue": inputs waiting or running}`."""
        ...

    async def listing(self, reload: bool = False) -> dict:
        """`{"loaded": [model cards], "refused": {name: reason}}`; `reload` rescans first."""
        ...

    async def answer(self, endpoint: str, body: Any) -> Answered:
        """One request of "completions", "chat" or "predict" (raises `ApiError`)."""
        ...


class LocalBackend:
    """The routes on one process's `PromptServer`. Building the app reads only the
    server's `options` (tools/write_openapi.py builds it around a stand-in)."""

    def __init__(self, server: PromptServer) -> None:
        self.server = server

    @property
    def options(self) -> ServeOptions:
        return self.server.options

    @property
    def metrics(self) -> ServerMetrics:
        return self.server.metrics

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()  # the queue is answered first: requests in flight complete

    async def health(self) -> dict:
        server = self.server
        return {"status": "ok", "prompts": len(server.pool.prompts), "queue": server.engine.depth}

    async def listing(self, reload: bool = False) -> dict:
        if reload:  # reading prompts touches the disk: off the event loop
            await asyncio.to_thread(self.server.reload)
        return pool_view(self.server)

    async def answer(self, endpoint: str, body: Any) -> Answered:
        return await answer(self.server, endpoint, body)


def create_app(server: PromptServer, manage: bool = True) -> FastAPI:
    """The app serving `server`; with `manage`, its lifespan starts and stops the server."""
    return create_api(LocalBackend(server), manage)


def create_api(backend: Backend, manage: bool = True) -> FastAPI:
    """The app answering from `backend`; with `manage`, its lifespan starts and stops it."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if manage:
            backend.start()
        yield
        if manage:
            backend.stop()

    app = FastAPI(
        title="softprompt serve",
        version="1",
        summary="Many soft prompts on one frozen model, behind an OpenAI-compatible API.",
        lifespan=lifespan,
    )
    install_handlers(app)
    _count_requests(app, backend)
    app.add_middleware(BodyLimit, limit=int(backend.options.max_body_mb * 2**20))
    _add_routes(app, backend)
    return app


def _count_requests(app: FastAPI, backend: Backend) -> None:
    @app.middleware("http")
    async def count(request: Request, call_next):
        response = await call_next(request)
        if request.url.path in COUNTED:
            prompt = getattr(request.state, "prompt", "")
            backend.metrics.requests.labels(prompt, str(response.status_code)).inc()
        return response


def _send(answered: Answered, response: Response):
    """A route's return value: the JSON body (headers added), or the event stream."""
    if answered.events is not None:
        return StreamingResponse(
            answered.events, media_type="text/event-stream", headers=answered.headers
        )
    response.headers.update(answered.headers)
    return answered.body


def _add_routes(app: FastAPI, backend: Backend) -> None:
    def authorised(request: Request) -> None:
        check_key(request, backend.options.api_key)

    guard = [Depends(authorised)]

    @app.get("/health")
    async def health() -> dict:
        return await backend.health()

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(backend.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=guard)
    async def models() -> dict:
        return {"object": "list", "data": (await backend.listing())["loaded"]}

    @app.get("/v1/prompts", dependencies=guard)
    async def prompts() -> dict:
        return await backend.listing()

    @app.post("/v1/prompts/reload", dependencies=guard)
    async def reload() -> dict:
        return await backend.listing(reload=True)

    @app.post("/v1/completions", dependencies=guard)
    async def completions(body: CompletionRequest, request: Request, response: Response):
        request.state.prompt = body.model
        return _send(await backend.answer("completions", body), response)

    @app.post("/v1/chat/completions", dependencies=guard)
    async def chat(body: ChatRequest, request: Request, response: Response):
        request.state.prompt = body.model
        return _send(await backend.answer("chat", body), response)

    @app.post("/v1/predict", dependencies=guard)
    async def predict(body: PredictRequest, request: Request, response: Response) -> list[dict]:
        """The records `softprompt predict` writes for the same inputs."""
        request.state.prompt = body.model
        return _send(await backend.answer("predict", body), response)
