"""The command line end to end on a tiny model: train, resume, eval, predict, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import make_config, prompt_method, write_config, write_jsonl

from softprompt.commands.cli import main


@pytest.fixture
def run_config(tiny_models, toy_data, tmp_path):
    cfg = make_config(
        tiny_models["llama"],
        toy_data,
        tmp_path / "run",
        method=prompt_method(num_virtual_tokens=8, init_method="VOCAB"),
        task={"max_new_tokens": 3},
        epochs=2,
        batch_size=8,
        learning_rate=0.3,
        save_steps=3,
    )
    return write_config(tmp_path / "config.yaml", cfg)


def test_train_eval_predict(run_config, tmp_path, capsys):
    assert main(["train", str(run_config), "training.epochs=1", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["global_step"] == 6
    run = tmp_path / "run"
    assert (run / "best" / "softprompt.json").is_file()

    # Resume the same run for a second epoch from its newest checkpoint.
    assert main(["train", str(run_config), "--resume", "auto", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["global_step"] == 12

    out = tmp_path / "metrics.json"
    assert (
        main(
            [
                "eval",
                str(run_config),
                "--prompt",
                str(run / "best"),
                "--output",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    metrics = json.loads(out.read_text())
    assert {"loss", "rougeL", "bleu", "exact_match"} <= set(metrics["val"])
    capsys.readouterr()

    # Zero-shot eval: no --prompt.
    assert main(["eval", str(run_config), "--split", "val", "--loss-only", "--no-progress"]) == 0
    zero = json.loads(capsys.readouterr().out)["val"]["loss"]
    assert zero > metrics["val"]["loss"]

    # predict --text: the base model is read from the prompt's metadata.
    assert (
        main(
            [
                "predict",
                "--prompt",
                str(run / "checkpoint-12"),
                "--text",
                "red cat",
                "--text",
                "blue",
                "--no-progress",
            ]
        )
        == 0
    )
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [r["input"] for r in lines] == ["red cat", "blue"]
    assert all("prediction" in r for r in lines)

    # predict --input FILE --output FILE.jsonl keeps ids and order.
    inputs = write_jsonl(
        tmp_path / "in.jsonl", [{"id": "a", "input": "green dog"}, {"id": "b", "input": "red"}]
    )
    target = tmp_path / "preds.jsonl"
    assert (
        main(
            [
                "predict",
                "--prompt",
                str(run / "best"),
                "--input",
                str(inputs),
                "--output",
                str(target),
                "--no-progress",
            ]
        )
        == 0
    )
    records = [json.loads(x) for x in target.read_text().splitlines()]
    assert [r["id"] for r in records] == ["a", "b"]


def test_user_errors_exit_2_without_traceback(run_config, tmp_path, capsys):
    assert main(["train", str(run_config), "training.batchsize=3"]) == 2
    err = capsys.readouterr().err
    assert "training.batch_size" in err and "Traceback" not in err
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert main(["train", str(run_config), "model.name_or_path=embedded:nope"]) == 2
    assert "embedded:nope" in capsys.readouterr().err
    assert main(["predict", "--prompt", str(tmp_path), "--text", "x"]) == 2
    assert "adapter_config.json" in capsys.readouterr().err
    bad_data = tmp_path / "bad.jsonl"
    bad_data.write_text('{"input": "a", "target": "b"}\n{not json\n')
    assert main(["train", str(run_config), f"data.train_path={bad_data}"]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err


def test_console_script_runs(run_config):
    result = subprocess.run(
        [sys.executable, "-m", "softprompt", "train", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "--resume" in result.stdout
