"""Image tasks (classify, caption, vqa): what the model reads, what it should say, and
how its answers are scored.

A task turns a raw `VisionExample` (image, question, label/answer/caption) into the text
the language model reads after the image and the words it should produce. The same
object is saved inside every prompt directory, so `predict --prompt DIR` formats inputs
exactly as training did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from softprompt.config import ConfigError, RunConfig
from softprompt.data.records import VisionExample

DEFAULT_TEMPLATES = {
    "classify": "{instruction} Answer:",
    "caption": "{instruction}",
    "vqa": "Question: {question} Answer:",
}
DEFAULT_INSTRUCTIONS = {
    "classify": "What is in this image?",
    "caption": "A short caption of the image:",
    "vqa": "",
}


@dataclass
class VisionTask:
    """The task an image prompt is trained for.

    Attributes:
        type: "classify", "caption" or "vqa".
        template: format string of the text after the image; `{instruction}` and
            `{question}` are filled in.
        instruction: the fixed instruction (classify, caption).
        classes: class names (classify), in label order.
        label_words: class name -> the words the model says for it (classify).
        answers: closed answer list (vqa); None means free generation.
        positive_label: the class ROC-AUC / average precision refer to.
        max_new_tokens: generation length.
    """

    type: str
    template: str
    instruction: str = ""
    classes: list[str] = field(default_factory=list)
    label_words: dict[str, str] = field(default_factory=dict)
    answers: list[str] | None = None
    positive_label: str | None = None
    max_new_tokens: int = 16

    @classmethod
    def from_config(cls, config: RunConfig, classes: list[str] | None = None) -> VisionTask:
        """Build from `task.*` / `data.template`; `classes` come from the training folders."""
        t = config.task
        kind = t.type
        classes = list(classes or (list(t.labels) if t.labels else []))
        words = dict(t.labels or {})
        if kind == "classify":
            if not classes:
                raise ConfigError(
                    "task.type classify needs classes: class folders in data.train_path, "
                    "or task.labels"
                )
            missing = [c for c in classes if c not in words]
            if t.labels and missing:
                raise ConfigError(
                    f"task.labels has no words for class(es) {', '.join(missing)} "
                    f"(classes found: {', '.join(classes)})"
                )
            words = {c: words.get(c, c) for c in classes}
            if len(set(words.values())) != len(words):
                raise ConfigError(f"task.labels: two classes share the same words: {words}")
        positive = t.positive_label
        if positive is not None and classes and positive not in classes:
            raise ConfigError(
                f"task.positive_label {positive!r} is not a class ({', '.join(classes)})"
            )
        return cls(
            type=kind,
            template=config.data.template or DEFAULT_TEMPLATES[kind],
            instruction=t.instruction if t.instruction is not None else DEFAULT_INSTRUCTIONS[kind],
            classes=classes,
            label_words=words,
            answers=list(t.answers) if t.answers else None,
            positive_label=positive,
            max_new_tokens=t.max_new_tokens,
        )

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> VisionTask:
        known = {k: v for k, v in record.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def text_for(self, question: str = "") -> str:
        """What the language model reads after the image."""
        return self.template.format(instruction=self.instruction, question=question).strip()

    def target_for(self, example: VisionExample) -> str | None:
        """The words the model should produce for an example (None if unlabelled)."""
        if self.type == "classify":
            if example.label is None:
                return None
            if example.label not in self.label_words:
                raise ConfigError(
                    f"{example.image_path}: class {example.label!r} is not in the task's "
                    f"classes ({', '.join(self.classes)})"
                )
            return self.label_words[example.label]
        return example.target

    def options(self) -> list[str] | None:
        """Candidate outputs scored instead of generated (classify: label words)."""
        if self.type == "classify":
            return [self.label_words[c] for c in self.classes]
        return self.answers

    def prepare(self, examples: list[VisionExample]) -> list[VisionExample]:
        """Copies of `examples` whose `text`/`target` are the LM's input and output text.

        A target that follows text not ending in whitespace gets a leading space, so it
        tokenizes as the natural next word (" yes", not "yes").
        """
        prepared = []
        for e in examples:
            text = self.text_for(e.text)
            target = self.target_for(e)
            prepared.append(replace(e, text=text, target=_spaced(text, target)))
        return prepared

    def option_targets(self, text: str) -> list[str]:
        return [_spaced(text, o) or "" for o in self.options() or []]


def _spaced(text: str, target: str | None) -> str | None:
    if target is None or not text or text[-1].isspace() or target[:1].isspace():
        return target
    return " " + target
