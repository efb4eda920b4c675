"""The batching engine: requests of any prompts and tasks gathered into shared batches.

Requests wait in one bounded queue. A single worker thread takes the first, gathers more
for up to `max_wait_ms` (or until `max_batch_size`), and answers them together:

- scored rows (classify, closed answers) in one pass, whatever their prompts;
- greedy generation rows in one pass per tokenization setting and prompt length (prompts
  of one length keep their cached keys and values; see `softprompt.backbones.prompt_cache`),
  each row stopping at its own budget or stop string (`softprompt.serving.rows`);
- sampled rows one at a time, each under its own seed, so a seed gives the same text
  whatever else was queued.

A row's answer equals the one it gets alone. A batch that fails is answered again row by
row, so one bad request only fails itself.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from softprompt.backbones.decoding import Decoding
from softprompt.errors import UserError
from softprompt.inference.execute import Row, generate_rows, prepare_row, score_rows
from softprompt.serving.pool import ServedPrompt
from softprompt.serving.rows import OnText, RowState, RowWatcher, final_text
from softprompt.tuners.prompt_tuning.bank import stack_prompts

logger = logging.getLogger("softprompt.serve")

# Image backbones put at most this many image tokens before the text (budgets keep room).
IMAGE_TOKENS = 64


class QueueFull(Exception):
    """The queue holds `max_queue` requests already."""


@dataclass
class Job:
    """One input to answer (one choice of a completion, one `/v1/predict` input).

    Attributes:
        prompt: the served prompt, as resolved when the request arrived.
        example: the input (a `TextExample` or `VisionExample`).
        max_new_tokens: its budget (None: the prompt's task's).
        stops: stop strings.
        temperature, top_p, seed: sampling (temperature 0: greedy).
        on_text: called (on the engine's thread) with each new piece of text.
        deliver: called once with the `Answer`, or with the exception that failed it.
    """

    prompt: ServedPrompt
    example: Any
    deliver: Callable[[Any], None]
    max_new_tokens: int | None = None
    stops: tuple[str, ...] = ()
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    on_text: OnText | None = None
    submitted: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Answer:
    """What a job gets: its record (as `predict` writes it), text and token counts."""

    record: dict[str, Any]
    text: str
    finish: str
    prompt_tokens: int
    completion_tokens: int
    first_token_s: float


class Engine:
    """The queue and its worker (see the module docstring).

    Args:
        backbone: the frozen model every prompt shares.
        observe: called with (event, value) for metrics: "batch" (rows), "queue" (depth).
    """

    def __init__(
        self,
        backbone: Any,
        max_batch_size: int = 16,
        max_wait_ms: float = 10.0,
        max_queue: int = 256,
        observe: Callable[[str, float], None] = lambda event, value: None,
    ) -> None:
        self.backbone = backbone
        self.max_batch_size = max(1, max_batch_size)
        self.max_wait = max(0.0, max_wait_ms) / 1000
        self.observe = observe
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=max(1, max_queue))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="softprompt-engine", daemon=True)
        self._busy = 0
        self.positions = position_limit(backbone)

    def start(self) -> None:
        self._thread.start()

    def submit(self, jobs: list[Job]) -> None:
        """Queue every job of one request, or none of them.

        Raises:
            QueueFull: there is no room for all of them.
        """
        with self._queue.mutex:
            room = self._queue.maxsize - len(self._queue.queue)
        if len(jobs) > room:
            raise QueueFull(f"the queue is full ({self._queue.maxsize} requests waiting)")
        for job in jobs:
            self._queue.put_nowait(job)
        self.observe("queue", self._queue.qsize())

    @property
    def depth(self) -> int:
        return self._queue.qsize() + self._busy

    @property
    def alive(self) -> bool:
        """Whether the worker runs (a started engine whose worker ended answers nothing)."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 60.0) -> None:
        """Answer what is queued, then stop the worker."""
        self._stop.set()
        self._thread.join(timeout)

    def _work(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            batch = self._gather()
            if not batch:
                continue
            self._busy = len(batch)
            self.observe("batch", len(batch))
            self.observe("queue", self._queue.qsize())
            try:
                self.run(batch)
            finally:
                self._busy = 0

    def _gather(self) -> list[Job]:
        try:
            batch = [self._queue.get(timeout=0.05)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch_size:
            left = deadline - time.monotonic()
            try:
                batch.append(
                    self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                )
            except queue.Empty:
                break
        return batch

    def run(self, jobs: list[Job]) -> None:
        """Answer `jobs` (any prompts, tasks and budgets); each gets `deliver` called."""
        rows, tokens = [], {}
        for index, job in enumerate(jobs):
            try:
                row, tokens[index] = self._row(index, job)
                rows.append(row)
            except Exception as err:  # a bad input fails its own job only
                job.deliver(err)
        for group in self._groups(rows, jobs):
            self._answer_group(group, jobs, tokens)

    def _row(self, index: int, job: Job) -> tuple[Row, int]:
        """The job's prepared row, its budget within the positions the model has left, and
        its input's length in tokens.

        Raises:
            UserError: the prompt and the input alone fill the model's positions.
        """
        row = prepare_row(index, job.prompt.route, job.example, job.max_new_tokens)
        tokens = row.route.task.lengths([row.prepared], self.backbone.tokenizer)[0]
        if self.positions is None or row.route.task.options() is not None:
            return row, tokens
        used = job.prompt.virtual_tokens + min(tokens, row.route.settings.max_input_length)
        if row.route.task.type != "text2text":
            used += IMAGE_TOKENS
        if used >= self.positions:
            raise UserError(
                f"the input ({tokens} tokens) and the prompt ({job.prompt.virtual_tokens}) fill "
                f"the model's {self.positions} positions; send a shorter input"
            )
        # Learned position embeddings end: generating past them fails.
        return replace(row, max_new_tokens=min(row.max_new_tokens, self.positions - used)), tokens

    def _groups(self, rows: list[Row], jobs: list[Job]) -> list[list[Row]]:
        """Rows that share one pass: scored together, greedy by lengths, sampled alone."""
        groups: dict[tuple, list[Row]] = {}
        for row in rows:
            job = jobs[row.index]
            s = row.route.settings
            if row.route.task.options() is not None:
                key: tuple = ("scored", s.max_input_length, s.max_target_length)
            elif Decoding(job.temperature).samples:
                key = ("sampled", row.index)
            else:
                key = ("greedy", s.max_input_length, job.prompt.virtual_tokens)
            groups.setdefault(key, []).append(row)
        return list(groups.values())

    def _answer_group(self, rows: list[Row], jobs: list[Job], tokens: dict[int, int]) -> None:
        try:
            answers = self._answer_rows(rows, jobs, [tokens[r.index] for r in rows])
        except Exception as err:
            if len(rows) == 1:
                logger.warning("request failed: %s", err)
                jobs[rows[0].index].deliver(err)
                return
            for row in rows:  # find the row that fails; the others are answered
                self._answer_group([row], jobs, tokens)
            return
        for row, answer in zip(rows, answers, strict=True):
            jobs[row.index].deliver(answer)

    def _answer_rows(self, rows: list[Row], jobs: list[Job], lengths: list[int]) -> list[Answer]:
        own = [jobs[r.index] for r in rows]
        tuners, rows = _batch_prompts(rows, own)
        if rows[0].route.task.options() is not None:
            outputs = score_rows(self.backbone, tuners, rows)
            done = time.monotonic()
            return [
                _scored_answer(r, job, out, n, self.backbone.tokenizer, done)
                for r, job, out, n in zip(rows, own, outputs, lengths, strict=True)
            ]
        states = [
            RowState(r.max_new_tokens, j.stops, j.on_text) for r, j in zip(rows, own, strict=True)
        ]
        watcher = RowWatcher(states, self.backbone.tokenizer)
        decoding = Decoding(own[0].temperature, own[0].top_p, watcher)
        if decoding.samples:
            seed = own[0].seed if own[0].seed is not None else random.randrange(2**31)
            torch.manual_seed(seed)
        budget = max(r.max_new_tokens for r in rows)
        generate_rows(self.backbone, tuners, rows, budget, decoding)
        watcher.finish_all()
        return [
            _generated_answer(r, job, state, n)
            for r, job, state, n in zip(rows, own, states, lengths, strict=True)
        ]


def position_limit(backbone: Any) -> int | None:
    """Positions the language model can take (None: relative positions, as T5's)."""
    config = backbone.lm.model.config
    if config.is_encoder_decoder:
        return None
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


class _BatchPrompts:
    """The prompts of one batch as the executor reads them: row ids into their table."""

    def __init__(self, vectors: list[torch.Tensor]) -> None:
        self.vectors = vectors

    def prompt_input(self, batch_size: int, ids: torch.Tensor | None = None):
        if ids is None:
            ids = torch.zeros(batch_size, dtype=torch.long)
        return stack_prompts(self.vectors, ids)


def _batch_prompts(rows: list[Row], jobs: list[Job]) -> tuple[_BatchPrompts, list[Row]]:
    """The batch's distinct prompts, and its rows pointing at them by position."""
    index: dict[str, int] = {}
    vectors: list[torch.Tensor] = []
    out = []
    for row, job in zip(rows, jobs, strict=True):
        if job.prompt.name not in index:
            index[job.prompt.name] = len(vectors)
            vectors.append(job.prompt.vectors)
        out.append(replace(row, route=replace(row.route, prompt_id=index[job.prompt.name])))
    return _BatchPrompts(vectors), out


def _scored_answer(row: Row, job: Job, output: dict, prompt_tokens: int, tokenizer, done: float):
    record = row.route.task.record(row.raw, output)
    text = str(record.get("prediction", ""))
    completion = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return Answer(record, text, "stop", prompt_tokens, completion, done - job.submitted)


def _generated_answer(row: Row, job: Job, state: RowState, prompt_tokens: int) -> Answer:
    text = final_text(state)
    record = row.route.task.record(row.raw, {"prediction": text})
    first = (state.first_token_at or time.monotonic()) - job.submitted
    return Answer(record, text, state.finish or "stop", prompt_tokens, len(state.ids), first)
