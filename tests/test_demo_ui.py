"""`softprompt demo-ui`: the Gradio page answers as `softprompt predict` does."""

from __future__ import annotations

import json
import socket

import pytest

pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402
from helpers import image_folders, make_config, write_config  # noqa: E402

from softprompt.commands.cli import main  # noqa: E402
from softprompt.inference.loaded import LoadedModel  # noqa: E402
from softprompt.workflows.ui import DemoSession, build_app, launch  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.timeout(180)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_tiny(tmp_path, model, data: dict, task: dict, prompt: dict, **model_options) -> str:
    """A couple of training steps through the CLI; returns RUN/best."""
    out = tmp_path / "run"
    raw = make_config(
        model,
        data,
        out,
        method={"prompt_tuning": prompt},
        task=task,
        model_options=model_options,
        max_steps=2,
        learning_rate=0.3,
    )
    config = write_config(tmp_path / "config.yaml", raw)
    assert main(["train", str(config), "--no-progress"]) == 0
    return str(out / "best")


def predicted(capsys, argv: list[str]) -> dict:
    capsys.readouterr()
    assert main(["predict", *argv, "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[0])


def serve(prompt: str, baseline: bool):
    """(app, client) of a page on a free loopback port, started in the background."""
    session = DemoSession(LoadedModel.from_bundle(prompt, device="cpu"), name=prompt)
    app = build_app(session, baseline=baseline)
    port = free_port()
    assert launch(app, "127.0.0.1", port).startswith(f"http://127.0.0.1:{port}")
    return app, Client(f"http://127.0.0.1:{port}/", verbose=False, httpx_kwargs={"timeout": 60})


def test_text_prompt_answers_like_predict(tiny_models, toy_data, tmp_path, capsys):
    prompt = train_tiny(
        tmp_path,
        tiny_models["gpt2"],
        {"train": toy_data["train"]},
        {"max_new_tokens": 4},
        {"num_virtual_tokens": 4, "init_method": "RANDOM"},
    )
    expected = predicted(capsys, ["--prompt", prompt, "--text", "red cat"])
    zero_shot = predicted(
        capsys, ["--prompt", prompt, "--text", "red cat", "--adapter", "prompt=off"]
    )
    app, client = serve(prompt, baseline=True)
    try:
        answer, record, base_answer, base_record = client.predict(
            None, "red cat", prompt, ["prompt"], api_name="/predict"
        )
        assert record == expected and answer == expected["prediction"]
        assert base_record == zero_shot and base_answer == zero_shot["prediction"]
        # With the prompt switched off on the page, the answer is the zero-shot one.
        _, off, _, _ = client.predict(None, "red cat", prompt, [], api_name="/predict")
        assert off == zero_shot
    finally:
        client.close()
        app.close()


def test_image_classifier_shows_label_probabilities(tiny_models, tiny_clip, tmp_path, capsys):
    root = image_folders(tmp_path / "folders", per_class=2)
    prompt = train_tiny(
        tmp_path,
        tiny_models["gpt2"],
        {"train": root},
        {"type": "classify", "labels": {"red": "red", "blue": "blue"}},
        {"num_virtual_tokens": 2, "init_method": "RANDOM"},
        vision_encoder=str(tiny_clip),
    )
    image = str(root / "red" / "red0.png")
    expected = predicted(capsys, ["--prompt", prompt, "--image", image])
    app, client = serve(prompt, baseline=False)
    try:
        label, record, _, base_record = client.predict(
            handle_file(image), "", prompt, ["prompt"], api_name="/predict"
        )
        assert record["prediction"] == expected["prediction"]
        assert record["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)
        assert label["label"] == expected["prediction"]
        shown = {c["label"]: c["confidence"] for c in label["confidences"]}
        assert shown == pytest.approx(expected["probabilities"], abs=1e-6)
        assert base_record is None  # no zero-shot column without --baseline
    finally:
        client.close()
        app.close()


def test_demo_ui_without_a_demo_run_says_run_make_demo(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["demo-ui"]) == 2
    assert "run `make demo` first" in capsys.readouterr().err
    assert main(["demo-ui", "--prompt", str(tmp_path), "--host", "0.0.0.0"]) == 2
    assert "only this machine" in capsys.readouterr().err


def test_bank_lists_its_tasks_and_answers_like_predict_task(tiny_models, tmp_path, capsys):
    from helpers import multitask_config

    config = multitask_config(tmp_path, tiny_models["llama"])
    assert main(["train", str(config), "--no-progress"]) == 0
    prompt = str(tmp_path / "run" / "best")
    session = DemoSession(LoadedModel.from_bundle(prompt, device="cpu"), name=prompt)
    assert session.prompt_choices() == ["colour", "count"] and not session.images
    for task in ("count", "colour"):
        expected = predicted(capsys, ["--prompt", prompt, "--task", task, "--text", "cat dog"])
        assert session.answer(None, "cat dog", task, ["prompt"]) == expected
