"""Multi-task runs (`tasks:`, one prompt each) and prompt ensembles, end to end through
the CLI on a tiny model; the sampling and ensemble arithmetic."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from helpers import multitask_config, write_jsonl

from softprompt.artifacts.bundle import read_bundle
from softprompt.artifacts.prompt_dir import load_prompt
from softprompt.commands.cli import main
from softprompt.config.run import ConfigError, load_config
from softprompt.data.mixing import mix_indices
from softprompt.inference.ensemble import mean_probabilities

pytestmark = pytest.mark.usefixtures("one_thread")


def test_multitask_run_trains_every_prompt_and_reports_each_task(tiny_models, tmp_path, capsys):
    config = multitask_config(tmp_path, tiny_models["llama"])
    assert main(["train", str(config), "--no-progress"]) == 0
    run = tmp_path / "run"
    results = json.loads((run / "all_results.json").read_text())
    evaluation = results["evaluations"][-1]
    for key in ("eval_colour_exact_match", "eval_count_exact_match", "eval_exact_match"):
        assert key in evaluation, sorted(evaluation)
    mean = (evaluation["eval_colour_loss"] + evaluation["eval_count_loss"]) / 2
    assert evaluation["eval_loss"] == pytest.approx(mean)
    assert "test_count_exact_match" in results and "test_colour_loss" not in results
    bundle = read_bundle(run / "best")
    assert bundle.adapters["prompt"].method == "prompt_bank"
    initial = {}
    from safetensors.torch import load_file

    for key, value in load_file(str(run / "initial_prompt.safetensors")).items():
        initial[key.rsplit(".", 1)[-1]] = value
    for name, length in (("colour", 3), ("count", 5)):
        trained = load_prompt(run / "best" / name).weight
        assert trained.shape[0] == length
        assert not torch.allclose(trained, initial[name]), f"{name} did not train"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_count_loss" in line for line in lines)

    capsys.readouterr()
    assert main(["predict", "--prompt", str(run / "best"), "--task", "count",
                 "--text", "cat dog"]) == 0  # fmt: skip
    assert "prediction" in json.loads(capsys.readouterr().out.splitlines()[0])
    assert main(["predict", "--prompt", str(run / "best"), "--text", "cat"]) == 2
    assert "colour, count" in capsys.readouterr().err
    inputs = write_jsonl(tmp_path / "in.jsonl", [
        {"input": "red cat", "task": "colour"},
        {"input": "dog", "task": "count"},
        {"input": "blue", "task": "colour"},
        {"text": "no input field", "task": "count"},
        {"input": "no task"},
    ])  # fmt: skip
    with inputs.open("a") as torn:
        torn.write('{"input": "torn", "ta\n')
    assert main(["predict", "--prompt", str(run / "best"), "--input", str(inputs)]) == 0
    out = capsys.readouterr()
    records = [json.loads(x) for x in out.out.splitlines()]
    assert [r["task"] for r in records] == ["colour", "count", "colour", "count", None, None]
    assert [r.get("input") for r in records] == ["red cat", "dog", "blue", None, None, None]
    # Ids and errors name the user's file and line (records are answered per task).
    assert [r["id"] for r in records] == [f"in.jsonl:{n}" for n in range(1, 7)]
    assert f"{inputs}:4: missing field 'input'" in records[3]["error"]
    assert "no 'task' field" in records[4]["error"] and f"{inputs}:6" in records[5]["error"]
    assert '"total": 6, "errors": 3' in out.err

    assert main(["eval", str(config), "--prompt", str(run / "best"), "--split", "val",
                 "--no-progress", "--loss-only"]) == 0  # fmt: skip
    scored = json.loads(capsys.readouterr().out)["val"]
    assert scored["colour_loss"] == pytest.approx(
        [e for e in results["evaluations"] if e["step"] == results["best_step"]][0][
            "eval_colour_loss"
        ],
        rel=1e-4,
    )


def test_multitask_run_resumes_exactly(tiny_models, tmp_path):
    config = multitask_config(tmp_path, tiny_models["llama"])
    assert main(["train", str(config), "training.max_steps=4", "training.save_steps=2",
                 "training.eval_steps=2", "--no-progress"]) == 0  # fmt: skip
    whole = load_prompt(tmp_path / "run" / "checkpoint-4" / "count").weight
    import shutil

    shutil.rmtree(tmp_path / "run" / "checkpoint-4")
    (tmp_path / "run" / "all_results.json").unlink()
    assert main(["train", str(config), "training.max_steps=4", "training.save_steps=2",
                 "training.eval_steps=2", "--resume", "auto", "--no-progress"]) == 0  # fmt: skip
    resumed = load_prompt(tmp_path / "run" / "checkpoint-4" / "count").weight
    torch.testing.assert_close(resumed, whole)


def test_task_entries_are_checked(tiny_models, tmp_path):
    config = multitask_config(tmp_path, tiny_models["llama"])
    raw = yaml.safe_load(config.read_text())
    raw["tasks"][1]["name"] = "colour"
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="used twice"):
        load_config(config)
    raw["tasks"][1] = {"name": "count", "data": {"max_input_length": 9}}
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="run-wide"):
        load_config(config)
    raw["tasks"][1] = {"name": "count", "task": {"type": "nonsense"}}
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"tasks\[1\] \(count\)"):
        load_config(config)
    seed_style = {"name": "a", "prompt": "Is this image AI-generated?", "num_virtual_tokens": 20}
    raw["tasks"] = [seed_style]
    config.write_text(yaml.safe_dump(raw))
    assert load_config(config).tasks[0].instruction == "Is this image AI-generated?"


def test_init_from_starts_a_task_from_a_trained_prompt(tiny_models, tmp_path):
    config = multitask_config(tmp_path, tiny_models["llama"])
    assert main(["train", str(config), "training.max_steps=1", "--no-progress"]) == 0
    source = tmp_path / "run" / "best" / "count"
    raw = yaml.safe_load(config.read_text())
    raw["tasks"][0] = {**raw["tasks"][0], "init_from": str(source), "num_virtual_tokens": None}
    raw["training"]["output_dir"] = str(tmp_path / "transfer")
    config.write_text(yaml.safe_dump(raw))
    from softprompt.backbones.loading import load_backbone
    from softprompt.tuners.prompt_tuning.bank import build_bank

    bank = build_bank(load_config(config), load_backbone(str(tiny_models["llama"])))
    torch.testing.assert_close(bank.vectors("colour"), load_prompt(source).weight)
    raw["tasks"][0]["num_virtual_tokens"] = 3
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="holds 5 prompt vectors"):
        build_bank(load_config(config), load_backbone(str(tiny_models["llama"])))


def test_ensemble_trains_members_and_reports_each(tiny_models, toy_data, tmp_path, capsys):
    raw = {
        "model": {"name_or_path": str(tiny_models["llama"])},
        "method": {"prompt_tuning": {"num_virtual_tokens": 3, "ensemble": 3}},
        "data": {"train_path": str(toy_data["train"]), "val_test_path": str(toy_data["val"])},
        "task": {"max_new_tokens": 2},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "batch_size": 8,
                     "learning_rate": 0.1},
    }  # fmt: skip
    config = tmp_path / "config.yaml"
    config.write_text("# softprompt train config.yaml\n" + yaml.safe_dump(raw))
    assert main(["train", str(config), "--no-progress"]) == 0
    results = json.loads((tmp_path / "run" / "all_results.json").read_text())
    last = results["evaluations"][-1]
    for key in ("eval_member0_exact_match", "eval_member2_loss", "eval_exact_match"):
        assert key in last
    members = [load_prompt(tmp_path / "run" / "best" / f"member{k}").weight for k in range(3)]
    assert not torch.allclose(members[0], members[1])
    capsys.readouterr()
    assert main(["predict", "--prompt", str(tmp_path / "run" / "best"),
                 "--text", "red cat"]) == 0  # fmt: skip
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    assert "candidates" in record and record["prediction"] in record["candidates"]


def test_ensemble_arithmetic():
    members = [
        [{"probabilities": {"yes": 0.9, "no": 0.1}}, {"probabilities": {"yes": 0.2, "no": 0.8}}],
        [{"probabilities": {"yes": 0.5, "no": 0.5}}, {"probabilities": {"yes": 0.6, "no": 0.4}}],
    ]
    means = mean_probabilities(members)
    torch.testing.assert_close(means[0], torch.tensor([0.7, 0.3]))
    torch.testing.assert_close(means[1], torch.tensor([0.4, 0.6]))


def test_mixing_proportional_and_temperature():
    assert mix_indices([3, 1], "proportional", 2.0, 0) == [0, 1, 2, 3]
    mixed = mix_indices([90, 10], "temperature", 1e9, 0)  # T -> inf: equal shares
    assert len(mixed) == 100
    assert sum(1 for i in mixed if i >= 90) == 50
    assert set(i for i in mixed if i >= 90) == set(range(90, 100))  # small task cycled
    same = mix_indices([90, 10], "temperature", 1.0, 0)  # T = 1: proportional shares
    assert sum(1 for i in same if i >= 90) == 10
