"""The demo web UI: one Gradio page over a `LoadedModel` (`softprompt demo-ui`).

Upload an image and/or type a question or text, pick the prompt (a bank's task when the
loaded bundle holds several), choose which adapters are on, and see the answer or the
label probabilities, beside the zero-shot answer of the bare model if asked. Every
request goes through `LoadedModel.predict`, the path `softprompt predict` takes, so the
page answers exactly what the command prints.

Only this module and the `demo-ui` command import gradio. The page works offline: it
sends no telemetry, checks for no updates, and uses the browser's own fonts.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

# Set before gradio is imported: it reads them at import and at launch.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402

from softprompt.config.run import ConfigError  # noqa: E402
from softprompt.data.errors import DataError  # noqa: E402
from softprompt.data.records import TextExample  # noqa: E402
from softprompt.inference.loaded import LoadedModel, zero_shot_task  # noqa: E402
from softprompt.inference.predict_io import image_inputs  # noqa: E402

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
MONO_FONTS = ["ui-monospace", "monospace"]


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (the UI has no login)."""
    return host in LOOPBACK_HOSTS or host.startswith("127.")


@dataclass
class DemoSession:
    """A loaded model and the switches one request sets on it (requests take turns).

    Attributes:
        loaded: the model with its adapters.
        name: how the page names the prompt (its directory) when there is no bank.
        max_new_tokens: generation length when a bank's task is selected (as `predict
            --task --max-new-tokens` passes it); None keeps each task's own.
    """

    loaded: LoadedModel
    name: str = "prompt"
    max_new_tokens: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    kinds: dict[str, tuple[str, bool]] = field(init=False)

    def __post_init__(self) -> None:
        # Each task's (type, scored), read once: a bank's tasks may differ in both.
        self.kinds = {}
        for name in self.prompt_choices():
            self._select(name)
            self.kinds[name] = (self.loaded.task.type, bool(self.loaded.task.options()))
        self._select(self.prompt_choices()[0])

    @property
    def bank_tasks(self) -> bool:
        """Whether the page picks among a bank's tasks."""
        return len(self.loaded.task_names()) > 1

    @property
    def images(self) -> bool:
        """Whether some task reads images (vqa, caption, classify), else text only."""
        return any(kind != "text2text" for kind, _ in self.kinds.values())

    @property
    def scored(self) -> bool:
        """Whether some task answers with option probabilities (classify, closed vqa)."""
        return any(scored for _, scored in self.kinds.values())

    def prompt_choices(self) -> list[str]:
        """A bank's tasks when it serves several, else the one prompt's name."""
        return self.loaded.task_names() if self.bank_tasks else [self.name]

    def adapters(self) -> dict[str, bool]:
        """Adapter name -> on, as saved (the checkboxes' initial state)."""
        return self.loaded.tuners.states()

    def answer(
        self,
        image: str | None,
        text: str | None,
        prompt: str | None = None,
        adapters: list[str] | None = None,
    ) -> dict[str, Any]:
        """One prediction record (as `softprompt predict` prints it).

        Args:
            image: an image file (image tasks).
            text: the question (vqa) or the input text (text tasks).
            prompt: a bank's task to use; ignored without a bank.
            adapters: the adapters switched on; None keeps them as saved, [] is zero-shot.
        """
        with self.lock:
            saved = self.loaded.tuners.states()
            if adapters is not None:
                self.loaded.set_adapters({name: name in adapters for name in saved})
            try:
                if prompt in self.kinds:  # an unknown name keeps the current task
                    self._select(prompt)
                return self._predict(image, text)
            finally:
                self.loaded.set_adapters(saved)

    def _select(self, name: str) -> None:
        """Serve a bank's task (its prompt, task, template), as `predict --task` does."""
        if self.bank_tasks:
            self.loaded.select_task(name, self.max_new_tokens)

    def _predict(self, image: str | None, text: str | None) -> dict[str, Any]:
        text = (text or "").strip()
        if self.loaded.reads_images and not self.loaded.tuners.states():
            # The bare model (zero-shot, as `predict --model`): a question asks, else caption.
            task, _ = zero_shot_task(True, bool(text), max_new_tokens=self.max_new_tokens)
            self.loaded.use_task(task)
        task_type = self.loaded.task.type
        if task_type != "text2text":
            if not image:
                raise DataError(f"this {task_type} task needs an image: upload one first")
            examples = image_inputs([image], question=text or None, task_type=task_type)
            return self.loaded.predict(examples, batch_size=1)[0]
        if not text:
            raise DataError("this task reads text: type some first")
        example = TextExample(id="0", input=self.loaded.apply_template(text))
        record = self.loaded.predict([example], batch_size=1)[0]
        record["input"] = text
        return record


def shown(record: dict[str, Any], scored: bool) -> Any:
    """What the answer component shows: label probabilities, or the prediction (or error)."""
    if "error" in record:
        return f"error: {record['error']}"
    if scored and "probabilities" in record:
        return record["probabilities"]
    return record.get("prediction", "")


def build_app(session: DemoSession, baseline: bool = False, title: str | None = None) -> gr.Blocks:
    """The page: inputs on the left, the tuned answer (and the zero-shot one) beside them.

    Args:
        session: the model to serve.
        baseline: also answer with every adapter off (zero-shot), side by side.
        title: the page heading (default: "softprompt: <prompt directory>").
    """
    title = title or f"softprompt: {session.name}"
    choices, states = session.prompt_choices(), session.adapters()
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        kinds = sorted({kind for kind, _ in session.kinds.values()})
        gr.Markdown(f"## {title}\ntask: **{', '.join(kinds)}**")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", label="image", visible=session.images)
                text = gr.Textbox(label=_text_label(kinds), lines=3)
                prompt = gr.Dropdown(
                    choices, value=choices[0], label="prompt", interactive=len(choices) > 1
                )
                switches = gr.CheckboxGroup(
                    list(states), value=[n for n, on in states.items() if on], label="adapters on"
                )
                run = gr.Button("Run", variant="primary")
            tuned = _answer_column("tuned", session.scored)
            zero = _answer_column("zero-shot (adapters off)", session.scored, visible=baseline)

        def respond(image_path, question, prompt_name, adapters_on):
            try:
                record = session.answer(image_path, question, prompt_name, adapters_on)
            except (DataError, ConfigError) as err:
                raise gr.Error(str(err)) from None
            base = {}
            if baseline:
                try:
                    base = session.answer(image_path, question, prompt_name, [])
                except ConfigError as err:  # e.g. full fine-tuning cannot be switched off
                    base = {"error": str(err)}
            return (
                shown(record, session.scored),
                record,
                shown(base, session.scored) if base else None,
                base or None,
            )

        run.click(
            respond,
            inputs=[image, text, prompt, switches],
            outputs=[*tuned, *zero],
            api_name="predict",
        )
    return app


def _text_label(kinds: list[str]) -> str:
    """What the text box holds for these task types (caption and classify read none)."""
    reads = {"vqa": "question", "text2text": "text"}
    names = sorted({reads[k] for k in kinds if k in reads})
    return " or ".join(names) if names else "text (unused by this task)"


def _answer_column(heading: str, scored: bool, visible: bool = True) -> tuple:
    """(answer component, record JSON) of one column."""
    with gr.Column(visible=visible):
        gr.Markdown(f"### {heading}")
        if scored:
            answer = gr.Label(label="label probabilities")
        else:
            answer = gr.Textbox(label="answer", interactive=False)
        record = gr.JSON(label="prediction record")
    return answer, record


def launch(app: gr.Blocks, host: str = "127.0.0.1", port: int = 7860) -> str:
    """Start serving the page on a loopback address (no login: never a public interface).

    Returns at once with the page's URL; `app.block_thread()` then waits until Ctrl-C
    (the command), `app.close()` stops it (tests).

    Raises:
        ValueError: `host` is not a loopback address.
    """
    if not is_loopback(host):
        raise ValueError(
            f"--host {host}: the demo UI has no login, so it serves only this machine "
            f"({', '.join(LOOPBACK_HOSTS)})"
        )
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)
    app.launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        prevent_thread_lock=True,
        show_error=True,
        quiet=True,  # gradio's own lines suggest share=True, which this page never uses
        theme=theme,
        ssr_mode=False,
        mcp_server=False,
        footer_links=["api"],
    )
    return app.local_url
