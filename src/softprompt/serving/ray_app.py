"""`softprompt serve --ray`: the HTTP API of `softprompt serve` on a Ray cluster.

Two Ray Serve deployments (docs/serving_ray.md):

- `PromptReplica`, N replicas: each holds the frozen base model and the batching engine,
  and reads prompts when requests first name them. Ray Serve's model multiplexing keeps
  the `max_prompts_per_replica` most recently used per replica (the model id is the
  prompt's name) and drops the least recently used.
- `Router`, the ingress: the routes, schemas, guards and errors of serving/app.py, on a
  backend that sends each request to a replica with `multiplexed_model_id` set to the
  prompt it names, so Ray routes it to a replica that holds that prompt when one does.

A request whose replica stops (killed, its node lost) before it answered is sent again,
up to `retries` times, to another replica: answers depend only on the request (greedy,
or sampled under its seed), so a repeat gives the same answer. When none is left, the
answer is a 503 (`replica_unavailable`). A stream whose replica stops after its first
event ends with an error event. `app_builder` is the builder for Ray's own `serve run`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import ray
from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from ray.serve.handle import DeploymentHandle

from softprompt.errors import UserError
from softprompt.serving.answers import SSE_DONE, Answered, answer, sse_event
from softprompt.serving.app import create_api
from softprompt.serving.errors import ApiError, error_body
from softprompt.serving.jobs import not_found
from softprompt.serving.metrics import ServerMetrics
from softprompt.serving.pool import ServedPrompt
from softprompt.serving.ray_cluster import RaySettings
from softprompt.serving.resident import HeldPrompt, PromptMissing, ResidentPrompts
from softprompt.serving.schemas import Sampling
from softprompt.serving.server import PromptServer

logger = logging.getLogger("softprompt.serve")

APP_NAME = "softprompt"
# The replica stopped or vanished under the request: another replica may answer it.
RETRIED = (RayActorError, ReplicaUnavailableError)
# No replica takes requests at all (all busy beyond their queues, or none deployed).
UNAVAILABLE = (BackPressureError, DeploymentUnavailableError)
RETRY_AFTER = {"Retry-After": "1"}
# Response headers: which replica answered, whether it held the prompt already, and
# how many replicas were tried.
REPLICA_HEADER = "x-softprompt-replica"
RESIDENT_HEADER = "x-softprompt-prompt-resident"
ATTEMPTS_HEADER = "x-softprompt-attempts"


@dataclass(frozen=True)
class Reply:
    """What a replica sends back to the ingress.

    Attributes:
        replica: the replica's actor name (`ray.get_actor(name, namespace="serve")`).
        resident: whether it held the request's prompt before this request.
        body: the JSON answer (or the listing).
        error: an `ApiError`'s (status, message, code, headers).
        first_token_s: seconds to each input's first token.
        cache: the replica's prompt key/value cache (hits, misses) so far.
    """

    replica: str
    resident: bool = False
    body: Any = None
    error: tuple | None = None
    first_token_s: tuple[float, ...] = ()
    cache: tuple[int, int] = (0, 0)


@serve.deployment(name="PromptReplica")
class PromptReplica:
    """One replica: the model, its engine, and the prompts its requests named."""

    def __init__(self, settings: RaySettings) -> None:
        self.server = PromptServer.load(settings.serve_options(), read_prompts=False)
        self.server.start(watch=False)
        self.resident = ResidentPrompts(self.server, settings.max_prompts_per_replica)
        self.name = ray.get_runtime_context().get_actor_name() or "replica"

        async def read_prompt(name: str) -> HeldPrompt:
            return await asyncio.to_thread(self.resident.read, name)

        # The limit is a setting, so the loader is wrapped here, not decorated in the
        # class body (as Ray's own LLM server does).
        limit = settings.max_prompts_per_replica
        self._hold = serve.multiplexed(max_num_models_per_replica=limit)(read_prompt)

    async def answer(self, endpoint: str, body: Any) -> Reply:
        """A non-streamed request of `endpoint`, for the prompt it was routed by."""
        try:
            prompt, resident = await self._prompt(serve.get_multiplexed_model_id() or body.model)
            answered = await answer(self.server, endpoint, body, prompt)
        except ApiError as err:
            return self._reply(error=err)
        return self._reply(resident, answered.body, answered.first_token_s)

    async def stream(self, endpoint: str, body: Any) -> AsyncIterator[Any]:
        """A streamed request: first a `Reply` (an error, or which replica answers),
        then the server-sent events."""
        try:
            prompt, resident = await self._prompt(serve.get_multiplexed_model_id() or body.model)
            answered = await answer(self.server, endpoint, body, prompt)
        except ApiError as err:
            yield self._reply(error=err)
            return
        yield self._reply(resident)
        async for event in answered.events:
            yield event

    async def listing(self) -> Reply:
        """Every servable prompt under the directory (`ResidentPrompts.listing`)."""
        return self._reply(body=await asyncio.to_thread(self.resident.listing))

    def check_health(self) -> None:
        """Ray's health check: a replica whose engine stopped is replaced."""
        if not self.server.engine.alive:
            raise RuntimeError("the batching engine stopped")

    def __del__(self) -> None:
        # Ray calls this when it stops the replica: queued inputs are answered first.
        # (Also run by the garbage collector on a replica whose __init__ failed.)
        server = self.__dict__.get("server")
        if server is not None:
            server.stop()

    async def _prompt(self, name: str) -> tuple[ServedPrompt, bool]:
        """The prompt `name` (read now unless held) and whether it was held already.

        Raises:
            ApiError: 404, the directory holds no such servable prompt.
        """
        if not name or not await asyncio.to_thread(self.resident.knows, name):
            raise not_found(name)  # before the multiplexer, which would drop a held one
        resident = self.resident.holds(name)
        try:
            held = await self._hold(name)
            return await asyncio.to_thread(self.resident.refresh, held), resident
        except PromptMissing:
            raise not_found(name) from None
        except (UserError, OSError, ValueError) as err:  # refused, as `serve` refuses it
            logger.warning("prompt %s refused: %s", name, err)
            raise not_found(name) from None

    def _reply(self, resident=False, body=None, first_token_s=(), error=None) -> Reply:
        cache = self.server.backbone.prompt_cache
        counts = (cache.hits, cache.misses) if cache is not None else (0, 0)
        problem = None
        if error is not None:
            problem = (error.status, error.message, error.code, error.headers)
        return Reply(self.name, resident, body, problem, tuple(first_token_s), counts)


class RayBackend:
    """The routes' backend on the ingress: each request goes to a replica by its prompt.

    Metrics are the ingress's own: requests, latency and time to first token (of
    non-streamed answers) as it sees them, and the prompt caches' hits and misses as
    the replicas last reported them; batch sizes and queue depths stay per replica.
    """

    def __init__(self, replicas: DeploymentHandle, settings: RaySettings) -> None:
        self.replicas = replicas
        self.settings = settings
        self.options = settings.serve_options()
        self.metrics = ServerMetrics(self._cache_counts)
        self._caches: dict[str, tuple[int, int]] = {}
        self._listed: dict | None = None
        self._listed_at = float("-inf")
        self._in_flight = 0

    def start(self) -> None:
        """Nothing to start: the replicas run on their own."""

    def stop(self) -> None:
        """Nothing to stop."""

    async def health(self) -> dict:
        listed = await self.listing()
        return {"status": "ok", "prompts": len(listed["loaded"]), "queue": self._in_flight}

    async def listing(self, reload: bool = False) -> dict:
        """The prompts under the directory, from any replica; kept `reload_interval`."""
        stale = time.monotonic() - self._listed_at >= self.settings.reload_interval
        if reload or self._listed is None or stale:
            reply, _ = await self._call(lambda: self.replicas.listing.remote())
            self._listed, self._listed_at = reply.body, time.monotonic()
        return self._listed

    async def answer(self, endpoint: str, body: Any) -> Answered:
        handle = self.replicas.options(multiplexed_model_id=body.model)
        started = time.monotonic()
        if isinstance(body, Sampling) and body.stream:
            return await self._stream(handle, endpoint, body, started)
        self._in_flight += 1
        try:
            reply, attempts = await self._call(lambda: handle.answer.remote(endpoint, body))
        finally:
            self._in_flight -= 1
        self.metrics.latency.labels(endpoint).observe(time.monotonic() - started)
        for seconds in reply.first_token_s:
            self.metrics.first_token.labels(endpoint).observe(seconds)
        return Answered(reply.body, headers=_headers(reply, attempts))

    async def _call(self, send: Callable[[], Any]) -> tuple[Reply, int]:
        """`send()`'s reply and the attempts it took, sent again while replicas stop.

        Raises:
            ApiError: the replica's own error; 503 when no replica answered in time.
        """
        wait = self.settings.request_timeout_s
        for attempt in range(1, self.settings.retries + 2):
            response = send()
            try:
                reply = await asyncio.wait_for(_settled(response), wait)
            except RETRIED as err:
                await self._before_retry(attempt, err)
                continue
            except asyncio.TimeoutError:
                response.cancel()
                raise self._timed_out() from None
            except UNAVAILABLE as err:
                raise _no_replica(err) from None
            return self._settle(reply), attempt
        raise self._gave_up()

    async def _stream(self, handle, endpoint: str, body: Any, started: float) -> Answered:
        """A stream from a replica; a replica that stops before its first event is
        replaced as for `_call`."""
        streaming, wait = handle.options(stream=True), self.settings.request_timeout_s
        for attempt in range(1, self.settings.retries + 2):
            events = streaming.stream.remote(endpoint, body)
            try:
                head = await asyncio.wait_for(_settled(anext(events)), wait)
            except RETRIED as err:
                await self._before_retry(attempt, err)
                continue
            except asyncio.TimeoutError:
                events.cancel()
                raise self._timed_out() from None
            except UNAVAILABLE as err:
                raise _no_replica(err) from None
            head = self._settle(head)
            relay = self._relay(events, endpoint, started)
            return Answered(events=relay, headers=_headers(head, attempt))
        raise self._gave_up()

    async def _relay(self, events, endpoint: str, started: float) -> AsyncIterator[str]:
        self._in_flight += 1
        finished = False
        try:
            async for event in events:
                yield event
            finished = True
        except RETRIED:  # events already sent cannot be taken back: say so, and end
            finished = True
            lost = "the replica answering this stream stopped; ask again"
            yield sse_event(error_body(503, lost, "replica_lost"))
            yield SSE_DONE
        except Exception:  # a fault on the replica: the stream's own error event, logged
            finished = True
            logger.exception("stream from a replica failed")
            yield sse_event(error_body(500, "internal error", "internal_error"))
            yield SSE_DONE
        finally:
            self._in_flight -= 1
            if not finished:  # the client left mid-stream: free the replica's rows
                events.cancel()
            self.metrics.latency.labels(endpoint).observe(time.monotonic() - started)

    def _settle(self, reply: Reply) -> Reply:
        self._caches[reply.replica] = reply.cache
        if reply.error is not None:
            raise ApiError(*reply.error)
        return reply

    async def _before_retry(self, attempt: int, err: Exception) -> None:
        logger.warning("replica stopped under a request (%s); attempt %d", err, attempt)
        if attempt <= self.settings.retries:
            await asyncio.sleep(min(0.05 * 2**attempt, 1.0))  # Ray learns of the death

    def _gave_up(self) -> ApiError:
        tries = self.settings.retries + 1
        message = f"the replicas answering this request stopped ({tries} tries); ask again"
        return ApiError(503, message, "replica_unavailable", RETRY_AFTER)

    def _timed_out(self) -> ApiError:
        message = f"no replica answered within {self.settings.request_timeout_s:g} s"
        return ApiError(503, message, "replica_timeout", RETRY_AFTER)

    def _cache_counts(self) -> tuple[int, int]:
        counts = list(self._caches.values())
        return sum(c[0] for c in counts), sum(c[1] for c in counts)


def _no_replica(err: Exception) -> ApiError:
    return ApiError(503, f"no replica takes requests: {err}", "replica_unavailable", RETRY_AFTER)


async def _settled(response) -> Any:
    return await response


def _headers(reply: Reply, attempts: int) -> dict[str, str]:
    return {
        REPLICA_HEADER: reply.replica,
        RESIDENT_HEADER: "true" if reply.resident else "false",
        ATTEMPTS_HEADER: str(attempts),
    }


@serve.deployment(name="Router")
@serve.ingress()
class Router:
    """The ingress: the HTTP API of serving/app.py on a `RayBackend`."""

    def __init__(self, replicas: DeploymentHandle, settings: RaySettings) -> None:
        self.backend = RayBackend(replicas, settings)

    def __serve_build_asgi_app__(self) -> FastAPI:
        # Ray builds the app on the replica, after __init__, so its routes use this
        # replica's backend (and its handle to the prompt replicas).
        return create_api(self.backend)

    async def listing(self) -> dict:
        """`GET /v1/prompts`'s answer, for callers holding a handle (the CLI's log)."""
        return await self.backend.listing()


def build_app(settings: RaySettings):
    """The Ray Serve application: `settings.replicas` prompt replicas behind the router.

    Returns:
        A `ray.serve.Application` for `serve.run`.
    """
    replicas = PromptReplica.options(
        num_replicas=settings.replicas,
        # Requests, not inputs: the engine's queue bounds inputs (503 beyond).
        max_ongoing_requests=settings.max_queue,
        ray_actor_options={"num_cpus": settings.replica_cpus, "num_gpus": settings.replica_gpus},
        graceful_shutdown_timeout_s=60,
    ).bind(settings)
    return Router.options(
        num_replicas=settings.routers,
        max_ongoing_requests=settings.max_queue * settings.replicas,
        ray_actor_options={"num_cpus": 0},
    ).bind(replicas, settings)


def app_builder(args: dict[str, str]):
    """The builder for Ray's CLI, which passes `key=value` arguments as strings:

        serve run softprompt.serving.ray_app:app_builder prompts_dir=prompts/ replicas=2

    The keys are `RaySettings`' fields (a wrong key or value fails, naming it).
    """
    return build_app(RaySettings.model_validate(args))


def deploy(settings: RaySettings, host: str, port: int) -> str:
    """Start Serve's HTTP proxy on `host:port` (unless Serve runs on the cluster already,
    with its own) and run the application on the connected cluster; returns the API's URL
    once every replica is up."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}/v1"


def describe() -> dict:
    """The running application's `GET /v1/prompts` answer."""
    return serve.get_app_handle(APP_NAME).listing.remote().result(timeout_s=120)


def undeploy(started_cluster: bool) -> None:
    """Remove the application; shut Serve and Ray down if `connect` started the cluster."""
    if started_cluster:
        serve.shutdown()
        ray.shutdown()
        return
    serve.delete(APP_NAME)
    ray.shutdown()
