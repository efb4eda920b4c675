"""Tasks (text2text, classify, caption, vqa): what the model reads, what it should say,
and how its answers are scored.

One `Task` protocol serves every task type, so evaluation, prediction and training have
one path: the task prepares examples, says whether outputs are scored options or
generated text, and turns outputs into records and metrics. A vision task turns a raw
`VisionExample` (image, question, label/answer/caption) into the text the language model
reads after the image and the words it should produce. The task is saved inside every
adapter bundle, so `predict --prompt DIR` formats inputs exactly as training did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from softprompt.config.run import ConfigError, RunConfig
from softprompt.data.records import TextExample, VisionExample
from softprompt.tasks.metrics import (
    bleu,
    cider,
    classification_metrics,
    exact_match,
    rouge,
    text_generation_metrics,
    vqa_accuracy,
)

MIN_VQA_ANNOTATORS = 3


class Task(Protocol):
    """What evaluation and prediction need to know about a task.

    Attributes:
        type: "text2text", "classify", "caption" or "vqa".
        max_new_tokens: generation length.
    """

    type: str
    max_new_tokens: int

    def prepare(self, examples: list) -> list:
        """Model-ready copies of raw examples (the text the model reads and must say)."""
        ...

    def lengths(self, examples: list, tokenizer: Any) -> list[int]:
        """Length proxies of prepared examples, for length-sorted batches."""
        ...

    def options(self) -> list[str] | None:
        """Candidate outputs scored instead of generated, or None (generate)."""
        ...

    def option_targets(self, text: str) -> list[str]:
        """The option strings as targets after `text`."""
        ...

    def record(self, raw: Any, output: dict[str, Any]) -> dict[str, Any]:
        """The prediction record of one raw example (id, input, output, reference)."""
        ...

    def metrics(self, examples: list, records: list[dict[str, Any]]) -> dict[str, Any]:
        """The task's metrics over labelled examples."""
        ...

    def to_record(self) -> dict[str, Any] | None:
        """What a saved prompt records of the task to rebuild it (None: nothing beyond
        the template and lengths every prompt records)."""
        ...


@dataclass
class TextTask:
    """Text to text (summarise, translate, answer): generation scored by BLEU/ROUGE/EM.

    Examples arrive with their template already applied by the data reader.
    """

    type: str = "text2text"
    max_new_tokens: int = 64

    @classmethod
    def from_config(cls, config: RunConfig) -> TextTask:
        return cls(max_new_tokens=config.task.max_new_tokens)

    def prepare(self, examples: list[TextExample]) -> list[TextExample]:
        return examples

    def lengths(self, examples: list[TextExample], tokenizer: Any) -> list[int]:
        from softprompt.data.batching import input_lengths

        return input_lengths(examples, tokenizer) if examples else []

    def options(self) -> list[str] | None:
        return None

    def option_targets(self, text: str) -> list[str]:
        return []

    def record(self, raw: TextExample, output: dict[str, Any]) -> dict[str, Any]:
        record: dict[str, Any] = {"id": raw.id, "input": raw.input}
        if raw.target is not None:
            record["target"] = raw.target
        record.update(output)
        return record

    def to_record(self) -> None:
        return None  # the template and lengths are in every prompt's task record

    def metrics(self, examples: list[TextExample], records: list[dict[str, Any]]) -> dict:
        preds = [r.get("prediction") or "" for r in records]
        refs = [e.references or [e.target or ""] for e in examples]
        return text_generation_metrics(preds, refs)


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
        templates: classify with CLIP: zero-shot templates ('{}': a class's words).
    """

    type: str
    template: str
    instruction: str = ""
    classes: list[str] = field(default_factory=list)
    label_words: dict[str, str] = field(default_factory=dict)
    answers: list[str] | None = None
    positive_label: str | None = None
    max_new_tokens: int = 16
    templates: list[str] = field(default_factory=list)

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
            templates=list(t.templates or []),
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

    def lengths(self, examples: list[VisionExample], tokenizer: Any = None) -> list[int]:
        # Character length is a good enough proxy for ordering batches by text length.
        return [len(e.text) + len(e.target or "") for e in examples]

    def record(self, raw: VisionExample, output: dict[str, Any]) -> dict[str, Any]:
        record: dict[str, Any] = {"id": raw.id, "image": raw.image_path}
        if self.type == "vqa":
            record["question"] = raw.text
        record.update(output)
        # The reference next to the prediction, so a predictions file can be read alone.
        if self.type == "classify":
            if raw.label:
                record["label"] = raw.label
        else:
            refs = raw.references or ([raw.target] if raw.target else [])
            if refs:
                record["references"] = refs
        return record

    def metrics(self, examples: list[VisionExample], records: list[dict[str, Any]]) -> dict:
        return task_metrics(self, examples, records)


def task_from_config(config: RunConfig, classes: list[str] | None = None) -> Task:
    """The config's task (`classes`: class folders found in the data, for classify)."""
    if config.task.type == "text2text":
        return TextTask.from_config(config)
    return VisionTask.from_config(config, classes)


def task_metrics(
    task: VisionTask, examples: list[VisionExample], records: list[dict[str, Any]]
) -> dict[str, Any]:
    """The task's metrics over labelled examples (unlabelled ones are ignored)."""
    preds = [r["prediction"] for r in records]
    if task.type == "classify":
        pairs = [(e.label, r) for e, r in zip(examples, records, strict=True) if e.label]
        if not pairs:
            return {}
        probabilities = [[r["probabilities"][c] for c in task.classes] for _, r in pairs]
        return classification_metrics(
            [label for label, _ in pairs],
            [r["prediction"] for _, r in pairs],
            labels=task.classes,
            probabilities=probabilities,
            positive_label=task.positive_label,
        )
    refs = [e.references or ([e.target] if e.target else []) for e in examples]
    keep = [i for i, r in enumerate(refs) if r]
    if not keep:
        return {}
    preds = [preds[i] for i in keep]
    refs = [refs[i] for i in keep]
    if task.type == "caption":
        return {"bleu": bleu(preds, refs), **rouge(preds, refs), "cider": cider(preds, refs)}
    metrics = {"exact_match": exact_match(preds, refs)}
    # The VQA formula credits min(#annotators who gave the answer / 3, 1): with a single
    # reference answer (easy-VQA, most custom sets) a right answer scores 1/3, which
    # reads as a wrong model. It is reported only where references are annotator sets.
    if all(len(r) >= MIN_VQA_ANNOTATORS for r in refs):
        metrics["vqa_accuracy"] = vqa_accuracy(preds, refs)
    return metrics


def _spaced(text: str, target: str | None) -> str | None:
    if target is None or not text or text[-1].isspace() or target[:1].isspace():
        return target
    return " " + target


def task_record(config: RunConfig) -> dict:
    """What a saved prompt remembers of its task, so predict needs no config."""
    lora = config.method.lora
    return {
        "type": config.task.type,
        "template": config.data.template,
        "input_field": config.data.input_field,
        "max_input_length": config.data.max_input_length,
        "max_target_length": config.data.max_target_length,
        "max_new_tokens": config.task.max_new_tokens,
        # A QLoRA adapter was trained on 4/8-bit base weights: predict reloads them so.
        "quantization_bit": lora.quantization_bit if lora.enabled else None,
    }
