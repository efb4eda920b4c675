"""The plain records every reader produces; collation turns them into tensors."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TextExample:
    """One text-to-text example.

    Attributes:
        id: stable identifier (from the file's `id` field, else "<file>:<line>").
        input: the source text, with the data template already applied.
        target: the reference output; None for prediction-only inputs.
        references: all reference outputs (several summaries, several answers); the
            first one is `target`. Metrics use all of them.
    """

    id: str
    input: str
    target: str | None = None
    references: list[str] = field(default_factory=list)
