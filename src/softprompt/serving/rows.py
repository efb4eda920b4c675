"""Each row of a generation batch on its own: budget, stop strings, streamed text.

`RowWatcher` is a `transformers.StoppingCriteria`: `generate` calls it after every step
with the ids so far, and it marks the rows that are done (their own token budget reached,
an end-of-sequence token, a stop string). A done row is only padded from then on, so the
other rows' tokens are those they get alone; generation ends when every row is done.

Streamed text is the same text the finished answer holds: leading and trailing white
space are held back (answers are stripped, as `predict`'s are), and so is an incomplete
UTF-8 character or the start of a possible stop string.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria

# Called with (text delta) as a row's answer grows.
OnText = Callable[[str], None]


@dataclass
class RowState:
    """One row's generation so far.

    Attributes:
        budget: new tokens it may have.
        stops: strings that end it (not part of its text).
        on_text: called with each new piece of its text (None: not streamed).
        ids: its new tokens (end-of-sequence excluded).
        finish: "stop" (end of sequence, stop string) or "length" (budget); None while
            it runs.
        text: its answer so far (stop string cut off).
        sent: the length of the text already handed to `on_text`.
        first_token_at: `time.monotonic()` of its first new token.
    """

    budget: int
    stops: tuple[str, ...] = ()
    on_text: OnText | None = None
    ids: list[int] = field(default_factory=list)
    finish: str | None = None
    text: str = ""
    sent: int = 0
    first_token_at: float | None = None


class RowWatcher(StoppingCriteria):
    """Per-row stopping and streaming for one `generate` call (see the module docstring)."""

    def __init__(self, rows: list[RowState], tokenizer) -> None:
        self.rows = rows
        self.tokenizer = tokenizer
        eos = tokenizer.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) - {None}

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        last = input_ids[:, -1].tolist()
        for row, token in zip(self.rows, last, strict=True):
            if row.finish is None:
                self._step(row, int(token))
        done = [row.finish is not None for row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _step(self, row: RowState, token: int) -> None:
        if row.first_token_at is None:
            row.first_token_at = time.monotonic()
        if token in self.eos:
            row.finish = "stop"
        else:
            row.ids.append(token)
            if len(row.ids) >= row.budget:
                row.finish = "length"
        # Decoding every step is only needed to stream or to look for stop strings.
        if row.on_text is not None or row.stops or row.finish is not None:
            self._decode(row)
            self._send(row)

    def _decode(self, row: RowState) -> None:
        row.text = self.tokenizer.decode(row.ids, skip_special_tokens=True).lstrip()
        cut = first_stop(row.text, row.stops)
        if cut is not None:
            row.text, row.finish = row.text[:cut], "stop"

    def finish_all(self) -> None:
        """Rows still running when `generate` returned (its own budget or EOS check)."""
        for row in self.rows:
            if row.finish is None:
                row.finish = "length" if len(row.ids) >= row.budget else "stop"
                self._decode(row)
            self._send(row)

    @staticmethod
    def _send(row: RowState) -> None:
        if row.on_text is None:
            return
        final = row.text.rstrip() if row.finish else safe_prefix(row.text, row.stops)
        if len(final) > row.sent:
            row.on_text(final[row.sent :])
            row.sent = len(final)


def first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the first stop string begins in `text` (None: none occurs)."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


def safe_prefix(text: str, stops: tuple[str, ...]) -> str:
    """The part of a growing text that no later token can change: trailing white space,
    an undecoded byte (U+FFFD) and a tail that could start a stop string held back."""
    keep = text.rstrip()
    while keep.endswith("\ufffd"):
        keep = keep[:-1]
    for stop in stops:
        for n in range(min(len(stop) - 1, len(keep)), 0, -1):
            if keep.endswith(stop[:n]):
                keep = keep[:-n]
                break
    return keep.rstrip()


def final_text(row: RowState) -> str:
    """The answer as `predict` writes it: stripped."""
    return row.text.strip()
