"""Hostile `softprompt train --resume`: a checkpoint is checked against the run resuming it
as `predict` checks a prompt against a model, and one of another run stops with one line
naming the checkpoint, the field, both values and what to do; never a traceback.

Covered: another base model of the same width (fingerprint), another prompt length,
another method set (LoRA added, a prompt bank instead of one prompt), an ensemble of
another size, another task type or template, a checkpoint recording no fingerprint
(written by an early version: the rest is still checked, with a warning), a missing
`--resume` path, and the same config resuming as before.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from helpers import make_config, prompt_method, toy_task, write_config, write_jsonl

from softprompt.artifacts.manifest import sha256_file
from softprompt.commands.cli import main
from softprompt.train.checkpoint import STATE_FILE

pytestmark = pytest.mark.usefixtures("one_thread")

SHORT = {"batch_size": 8, "save_steps": 2, "eval_generate": False}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("resume_data")
    return {
        "train": write_jsonl(root / "train.jsonl", toy_task(16, seed=1)),
        "val": write_jsonl(root / "val.jsonl", toy_task(4, seed=2)),
    }


def config_file(
    directory: Path, model, data, run: Path, steps: int, *, method=None, data_options=None
) -> Path:
    raw = make_config(
        model, data, run, task={"max_new_tokens": 2}, method=method or prompt_method(),
        training=SHORT, max_steps=steps,
    )  # fmt: skip
    raw["data"].update(data_options or {})
    return write_config(directory / f"config-{steps}.yaml", raw)


@pytest.fixture(scope="module")
def trained(tiny_models, data, tmp_path_factory) -> Path:
    """A GPT-2 prompt run stopped after its checkpoint-2."""
    root = tmp_path_factory.mktemp("resume_run")
    config = config_file(root, tiny_models["gpt2"], data, root / "run", 2)
    assert main(["train", str(config), "--no-progress"]) == 0
    return root / "run"


@pytest.fixture
def run(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def resume(config: Path, capsys, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["train", str(config), "--no-progress", "--resume", *(extra or ("auto",))])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def refused(code: int, err: str, *needles: str) -> str:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "training.output_dir" in lines[0]  # what to do
    return lines[0]


def test_another_model_of_the_same_width_is_refused(run, tiny_models, data, tmp_path, capsys):
    config = config_file(tmp_path, tiny_models["llama"], data, run, 4)
    line = refused(*resume(config, capsys), "checkpoint-2", "fingerprint.embedding")
    assert "tiny-gpt2" in line and "tiny-llama" in line


def test_another_prompt_length_is_refused(run, tiny_models, data, tmp_path, capsys):
    method = prompt_method(num_virtual_tokens=5)
    config = config_file(tmp_path, tiny_models["gpt2"], data, run, 4, method=method)
    refused(*resume(config, capsys), "checkpoint-2", "shape", "4 x 32", "5 x 32")


@pytest.mark.parametrize(
    "method,needle",
    [
        ({**prompt_method(), "lora": {"enabled": True, "r": 2}}, "lora (lora)"),
        (prompt_method(ensemble=2), "prompt (prompt_bank)"),
    ],
)
def test_another_method_set_is_refused(run, tiny_models, data, tmp_path, capsys, method, needle):
    config = config_file(tmp_path, tiny_models["gpt2"], data, run, 4, method=method)
    refused(*resume(config, capsys), "the methods", "prompt (prompt_tuning)", needle)


def test_an_ensemble_of_another_size_is_refused(tiny_models, data, tmp_path, capsys):
    first = config_file(tmp_path, tiny_models["gpt2"], data, tmp_path / "run", 2,
                        method=prompt_method(ensemble=2))  # fmt: skip
    assert main(["train", str(first), "--no-progress"]) == 0
    bigger = config_file(tmp_path, tiny_models["gpt2"], data, tmp_path / "run", 4,
                         method=prompt_method(ensemble=3))  # fmt: skip
    refused(*resume(bigger, capsys), "the bank's prompts", "member0, member1, member2")


def renamed_input(path: Path, rows: list[dict]) -> Path:
    return write_jsonl(path, [{"text": r.pop("input"), **r} for r in rows])


@pytest.mark.parametrize(
    "options,needle",
    [({"template": "Q: {input} A:"}, "task template"), ({"input_field": "text"}, "input_field")],
)
def test_another_task_is_refused(run, tiny_models, data, tmp_path, capsys, options, needle):
    if "input_field" in options:
        data = {
            "train": renamed_input(tmp_path / "t.jsonl", toy_task(16, seed=1)),
            "val": renamed_input(tmp_path / "v.jsonl", toy_task(4, seed=2)),
        }
    config = config_file(tmp_path, tiny_models["gpt2"], data, run, 4, data_options=options)
    refused(*resume(config, capsys), "checkpoint-2", needle)


def forget_fingerprint(checkpoint: Path) -> None:
    """What a checkpoint of an early version holds: no fingerprint in the prompt's manifest."""
    meta_path = checkpoint / "softprompt.json"
    meta = json.loads(meta_path.read_text())
    del meta["fingerprint"]
    meta_path.write_text(json.dumps(meta, indent=2))
    state_path = checkpoint / STATE_FILE
    state = json.loads(state_path.read_text())
    state["files"]["softprompt.json"] = sha256_file(meta_path)
    state_path.write_text(json.dumps(state, indent=2))


def test_a_checkpoint_without_fingerprint_is_checked_for_the_rest(
    run, tiny_models, data, tmp_path, capsys, caplog
):
    forget_fingerprint(run / "checkpoint-2")
    method = prompt_method(num_virtual_tokens=5)
    longer = config_file(tmp_path, tiny_models["gpt2"], data, run, 4, method=method)
    refused(*resume(longer, capsys), "5 x 32")
    same = config_file(tmp_path, tiny_models["gpt2"], data, run, 4)
    with caplog.at_level(logging.WARNING, logger="softprompt"):
        code, err = resume(same, capsys)
    assert code == 0, err
    assert "no base-model fingerprint" in caplog.text


def test_a_missing_resume_path_is_one_line(run, tiny_models, data, tmp_path, capsys):
    config = config_file(tmp_path, tiny_models["gpt2"], data, run, 4)
    code, err = resume(config, capsys, str(tmp_path / "no-such-checkpoint"))
    assert code == 2 and "checkpoint not found" in err, err


def test_the_same_config_resumes(run, tiny_models, data, tmp_path, capsys):
    config = config_file(tmp_path, tiny_models["gpt2"], data, run, 4)
    code, err = resume(config, capsys)
    assert code == 0, err
    assert (run / "checkpoint-4").is_dir()
