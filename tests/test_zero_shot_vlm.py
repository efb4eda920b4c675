"""Zero-shot prediction with a bare vision-language model (`predict --model` without
`--prompt`): a caption without `--question`, an answer with one, the family's default hard
prompt or `--instruction`, for every family one model path loads."""

from __future__ import annotations

import json

import pytest
from helpers import colour_images, make_config, write_config, write_jsonl
from serve_helpers import write_prompt
from tiny_checkpoints import KINDS

from softprompt.backbones.loading import load_backbone
from softprompt.commands.cli import main
from softprompt.config.run import load_config
from softprompt.data.records import VisionExample
from softprompt.inference.eval_run import load_for_evaluation
from softprompt.inference.loaded import LoadedModel, zero_shot_task
from softprompt.tasks.kinds import DEFAULT_INSTRUCTIONS, VisionTask

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    return colour_images(tmp_path_factory.mktemp("zero-shot"), per_colour=1)


def predict(argv: list[str], capsys) -> tuple[int, list[dict], str]:
    capsys.readouterr()
    code = main(["predict", *argv, "--max-new-tokens", "3", "--no-progress"])
    out = capsys.readouterr()
    return code, [json.loads(line) for line in out.out.splitlines() if line.strip()], out.err


@pytest.mark.parametrize("kind", KINDS)
def test_bare_vlm_captions_and_answers(kind, tiny_vlms, pngs, capsys):
    model, image = str(tiny_vlms[kind]), str(pngs["red"][0])
    code, records, err = predict(["--model", model, "--image", image], capsys)
    assert code == 0, err
    assert len(records) == 1 and isinstance(records[0]["prediction"], str)
    assert "question" not in records[0] and '"total": 1, "errors": 0' in err
    question = "what colour is it?"
    argv = ["--model", model, "--image", image, "--question", question]
    code, records, err = predict(argv, capsys)
    assert code == 0, err
    assert records[0]["question"] == question and isinstance(records[0]["prediction"], str)
    code, records, err = predict([*argv, "--instruction", "Look {closely}."], capsys)
    assert code == 0 and "error" not in records[0], err


def test_bare_vlm_input_records_with_questions_are_answered(tiny_vlms, pngs, tmp_path, capsys):
    rows = [
        {"id": "q", "image_path": str(pngs["red"][0]), "question": "which colour?"},
        {"id": "none", "image_path": str(pngs["blue"][0])},
        {"id": "gone", "image_path": "missing.png", "question": "which colour?"},
    ]
    source = tmp_path / "inputs.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    argv = ["--model", str(tiny_vlms["blip2-opt"]), "--input", str(source)]
    code, records, err = predict(argv, capsys)
    assert code == 0, err
    assert [r["id"] for r in records] == ["q", "none", "gone"]
    assert records[0]["question"] == "which colour?" and "prediction" in records[0]
    assert "question" in records[1]["error"] and "not found" in records[2]["error"]
    assert '"total": 3, "errors": 2' in err


def test_zero_shot_task_uses_the_default_hard_prompt_or_the_instruction():
    caption, _ = zero_shot_task(True)
    assert isinstance(caption, VisionTask) and caption.type == "caption"
    assert caption.text_for() == DEFAULT_INSTRUCTIONS["caption"]
    vqa, _ = zero_shot_task(True, question=True)
    assert vqa.text_for("why?") == "Question: why? Answer:"
    told, _ = zero_shot_task(True, question=True, instruction="Be brief.")
    assert told.text_for("why?") == "Be brief. Question: why? Answer:"
    text, record = zero_shot_task(False, instruction="Say {it}:")
    assert text.type == "text2text" and record["template"].format(input="x") == "Say {it}: x"


def test_bare_text_model_refuses_images_and_takes_an_instruction(tiny_models, pngs, capsys):
    model = str(tiny_models["gpt2"])
    code, _, err = predict(["--model", model, "--image", str(pngs["red"][0])], capsys)
    assert code != 0 and f"{model} reads text" in err
    code, records, err = predict(["--model", model, "--text", "hi", "--instruction", "Q:"], capsys)
    assert code == 0 and records[0]["input"] == "hi" and "prediction" in records[0]


def test_instruction_needs_the_bare_model(tiny_models, tmp_path, capsys):
    backbone = load_backbone(str(tiny_models["gpt2"]))
    prompt = write_prompt(tmp_path / "prompt", backbone, 2, 1)
    code, _, err = predict(["--prompt", str(prompt), "--text", "x", "--instruction", "y"], capsys)
    assert code != 0 and "--instruction" in err


def test_zero_shot_is_the_bare_model_with_no_adapters(tiny_vlms):
    loaded = LoadedModel.bare_model(str(tiny_vlms["blip2-t5"]), 2)
    assert loaded.reads_images and loaded.tuners.states() == {}
    assert loaded.task.type == "caption" and loaded.task.max_new_tokens == 2


def test_demo_session_on_the_bare_model_captions_or_answers(tiny_vlms, pngs):
    from softprompt.workflows.ui import DemoSession

    session = DemoSession(LoadedModel.bare_model(str(tiny_vlms["instructblip-t5"]), 2))
    image = str(pngs["blue"][0])
    assert "question" not in session.answer(image, None)
    answered = session.answer(image, "which colour?", adapters=[])
    assert answered["question"] == "which colour?" and "prediction" in answered


def test_baseline_answers_as_zero_shot_predict(tiny_vlms, pngs, tmp_path, capsys):
    model, image = str(tiny_vlms["blip2-opt"]), pngs["red"][0]
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"image_path": str(image), "text": "red"}])
    raw = make_config(model, {"train": data, "val": data}, tmp_path / "run",
                      task={"type": "caption", "max_new_tokens": 3})  # fmt: skip
    config = load_config(write_config(tmp_path / "config.yaml", raw))
    baseline = load_for_evaluation(config)
    assert baseline.tuners.states() == {} and baseline.task.type == "caption"
    code, records, err = predict(["--model", model, "--image", str(image)], capsys)
    assert code == 0, err
    answered = baseline.predict([VisionExample(id="red", image_path=str(image), target="")])
    assert answered[0]["prediction"] == records[0]["prediction"]
