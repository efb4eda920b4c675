"""From request bodies to engine jobs, and from the engine's thread back to asyncio.

A request's inputs become `Job`s of the prompt it names; `run_jobs` queues them all at
once and awaits their answers, `stream_jobs` yields their text as it is generated.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from softprompt.data.records import TextExample, VisionExample
from softprompt.errors import UserError
from softprompt.serving.engine import Answer, Job, QueueFull
from softprompt.serving.errors import ApiError
from softprompt.serving.images import BadImage, decode_data
from softprompt.serving.pool import ServedPrompt
from softprompt.serving.schemas import ChatRequest, ImagePart, Sampling
from softprompt.serving.server import PromptServer


def resolve(server: PromptServer, name: str) -> ServedPrompt:
    """The prompt a request names.

    Raises:
        ApiError: 404, no such prompt (the names served are in GET /v1/models).
    """
    prompt = server.pool.get(name)
    if prompt is None:
        raise not_found(name)
    return prompt


def not_found(name: str) -> ApiError:
    """The 404 of a request naming a prompt that is not served."""
    return ApiError(404, f"no prompt {name!r} (GET /v1/models lists them)", "model_not_found")


def is_vision(prompt: ServedPrompt) -> bool:
    return prompt.task_type != "text2text"


def text_example(prompt: ServedPrompt, text: str, index: int = 0) -> TextExample:
    """A text input as `predict --text` reads it (the prompt's template applied)."""
    if is_vision(prompt):
        raise ApiError(
            400,
            f"prompt {prompt.name!r} answers images ({prompt.task_type}): send an image "
            "(an image_url part on /v1/chat/completions, or 'image' on /v1/predict)",
            "image_required",
        )
    return TextExample(id=str(index), input=prompt.route.apply_template(text))


def image_example(
    server: PromptServer, prompt: ServedPrompt, data: str, question: str, index: int = 0
) -> VisionExample:
    """An image input, its bytes spooled and checked (release the path when answered)."""
    if not is_vision(prompt):
        raise ApiError(
            400, f"prompt {prompt.name!r} was trained on text; it takes no images", "text_only"
        )
    try:
        path = server.spool.add(decode_data(data))
    except BadImage as err:
        raise ApiError(400, str(err), "invalid_image") from None
    return VisionExample(id=str(index), image_path=path, text=question)


def chat_input(server: PromptServer, prompt: ServedPrompt, body: ChatRequest) -> Any:
    """The last user message as one input: its text, and its image for an image prompt."""
    users = [m for m in body.messages if m.role == "user"]
    if not users:
        raise ApiError(400, "messages: no user message", "invalid_messages")
    content = users[-1].content
    parts = [content] if isinstance(content, str) else list(content or [])
    texts = [p if isinstance(p, str) else p.text for p in parts if not isinstance(p, ImagePart)]
    images = [p.image_url.url for p in parts if isinstance(p, ImagePart)]
    text = "\n".join(texts)
    if not is_vision(prompt):
        if images:
            image_example(server, prompt, images[0], text)  # raises: a text prompt
        return text_example(prompt, text)
    if len(images) != 1:
        raise ApiError(400, "an image prompt needs exactly one image_url part", "image_required")
    return image_example(server, prompt, images[0], text)


def budget(prompt: ServedPrompt, requested: int | None) -> int:
    """The new-token budget asked for, or the task's (the engine keeps it within the
    model's positions)."""
    return requested or prompt.route.task.max_new_tokens


def make_jobs(
    server: PromptServer, prompt: ServedPrompt, examples: list, body: Sampling | None, tokens
) -> list[Job]:
    """One job per input, sampling as `body` asks (None: greedy, the task's stops)."""
    settings = {}
    if body is not None:
        settings = {
            "stops": body.stop_strings(),
            "temperature": body.temperature,
            "top_p": body.top_p,
            "seed": body.seed,
        }
    wanted = budget(prompt, tokens)
    return [Job(prompt, e, _unset, wanted, **settings) for e in examples]


def _unset(_: Any) -> None:
    raise RuntimeError("job delivered before it was queued")


def _release(server: PromptServer, jobs: list[Job]) -> None:
    for job in jobs:
        if isinstance(job.example, VisionExample):
            server.spool.release(job.example.image_path)


def _queue(server: PromptServer, jobs: list[Job]) -> None:
    try:
        server.engine.submit(jobs)
    except QueueFull as err:
        _release(server, jobs)
        raise ApiError(503, str(err), "queue_full", {"Retry-After": "1"}) from None


def _failure(value: Exception) -> ApiError:
    if isinstance(value, ApiError):
        return value
    if isinstance(value, UserError):
        return ApiError(400, str(value), "invalid_input")
    return ApiError(500, f"internal error: {type(value).__name__}", "internal_error")


async def run_jobs(server: PromptServer, jobs: list[Job]) -> list[Answer]:
    """Every job's answer, in order.

    Raises:
        ApiError: the queue is full (503), or a job failed (400 for bad input).
    """
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in jobs]
    for job, future in zip(jobs, futures, strict=True):
        job.deliver = _settler(loop, future)
    _queue(server, jobs)
    try:
        answers = await asyncio.gather(*futures)
    finally:
        _release(server, jobs)
    for value in answers:
        if isinstance(value, Exception):
            raise _failure(value)
    return answers


def _settler(loop: asyncio.AbstractEventLoop, future: asyncio.Future):
    def settle(value: Any) -> None:
        loop.call_soon_threadsafe(lambda: future.done() or future.set_result(value))

    return settle


def stream_jobs(server: PromptServer, jobs: list[Job]) -> AsyncIterator[tuple[int, Any]]:
    """Queue the jobs now; iterate (job index, new text) as it is generated, and
    (job index, `Answer`) when a job is done.

    Raises:
        ApiError: 503 when the queue is full (at once, before any iteration); a failed
            job's error while iterating.
    """
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    for index, job in enumerate(jobs):
        job.on_text = _pusher(loop, events, index)
        job.deliver = _pusher(loop, events, index, done=True)
    _queue(server, jobs)
    return _drain(server, jobs, events)


async def _drain(server: PromptServer, jobs: list[Job], events: asyncio.Queue):
    try:
        left = len(jobs)
        while left:
            index, value, done = await events.get()
            if done and isinstance(value, Exception):
                raise _failure(value)
            left -= done
            yield index, value
    finally:
        _release(server, jobs)


def _pusher(loop, events: asyncio.Queue, index: int, done: bool = False):
    def push(value: Any) -> None:
        loop.call_soon_threadsafe(events.put_nowait, (index, value, done))

    return push
