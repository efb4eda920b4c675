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


@dataclass
class VisionExample:
    """One image example, for classification, captioning or visual question answering.

    Attributes:
        id: stable identifier (the image's path relative to the dataset root for folders,
            the question id for VQA, the record's `id` field or ``"<file>:<line>"`` otherwise).
        image_path: path of the image file, as the readers found it (absolute, or relative
            to the working directory).
        text: the question or instruction shown with the image; "" when the task has none
            (plain captioning, classification).
        target: the reference output (the answer, the first caption or the class name);
            None for prediction-only inputs.
        references: all reference outputs (the ten VQA answers, every caption); metrics use
            all of them. Empty when `target` is None.
        label: the class name, for classification; None for other tasks.
    """

    id: str
    image_path: str
    text: str = ""
    target: str | None = None
    references: list[str] = field(default_factory=list)
    label: str | None = None
