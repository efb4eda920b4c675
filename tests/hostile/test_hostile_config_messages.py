"""What the messages about a config, its tasks and a run's log say: the offending value
only (never the whole config), the task a missing data file belongs to, the field a bank
record lacks, and a warning for every metrics.jsonl line a report skips."""

from __future__ import annotations

import json
import logging

import pytest
import yaml
from helpers import multitask_config

from softprompt.commands.cli import main
from softprompt.config.multitask import task_specs
from softprompt.config.run import ConfigError, build_config, load_config

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT_AND_IMAGE = [
    {"name": "a", "task": {"type": "text2text"}},
    {"name": "b", "task": {"type": "classify"}},
]


@pytest.mark.parametrize(
    "raw,names",
    [
        (
            {
                "method": {"prefix_tuning": {"enabled": True}},
                "training": {"gradient_checkpointing": True},
            },
            ["gradient_checkpointing"],
        ),
        ({"training": {"metric_for_best_model": "bleu", "eval_generate": False}}, ["'bleu'"]),
        ({"method": {"prompt_tuning": {"init_method": "TEXT"}}}, ["init_text"]),
        ({"tasks": [{"name": "a"}, {"name": "a"}]}, ["tasks[1] (a)", "used twice"]),
        ({"tasks": [{"name": "a", "data": {"max_input_length": 9}}]}, ["data.max_input_length"]),
        ({"tasks": [{"name": "a", "task": {"type": "bogus"}}]}, ["task.type", "(got 'bogus')"]),
        ({"tasks": [{"name": "a", "task": {"labels": 5}}]}, ["task.labels", "(got 5)"]),
        ({"tasks": TEXT_AND_IMAGE}, ["image tasks and text tasks"]),
        ({"tasks": [{"data": {"train_path": "x.jsonl"}}]}, ["tasks[0].name", "missing"]),
        (
            {"tasks": [{"name": "a"}, {"name": "b", "num_virtual_tokens": 0}]},
            ["tasks[1].num_virtual_tokens", "(got 0)"],
        ),
        ({"tasks": [{"name": "a", "num_virtual_token": 3}]}, ["num_virtual_tokens"]),
        ({"tasks": {"a": 1}}, ["tasks", "(got {'a': 1})"]),
    ],
)
def test_config_errors_show_the_offending_value_only(raw, names):
    with pytest.raises(ConfigError) as err:
        build_config(raw)
    message = str(err.value)
    assert "{'method'" not in message and "{'training'" not in message, message
    assert "{'tasks'" not in message and "{'data'" not in message, message
    assert message.count("(got ") <= 1, message
    if not any("(got {" in name for name in names):  # a section's check shows no section
        assert "(got {" not in message, message
    for name in names:
        assert name in message, message


@pytest.mark.parametrize(
    "task,key,file",
    [
        ("count", "train_path", "count_train.jsonl"),
        ("colour", "val_test_path", "colour_val.jsonl"),
        ("count", "test_path", "count_test.jsonl"),
    ],
)
def test_missing_task_data_file_names_the_task(tiny_models, tmp_path, task, key, file):
    config = multitask_config(tmp_path, tiny_models["gpt2"])
    (tmp_path / "data" / file).unlink()
    index = ["colour", "count"].index(task)
    with pytest.raises(ConfigError) as err:
        task_specs(load_config(config))
    message = str(err.value)
    assert f"tasks[{index}] ({task})" in message and f"data.{key}" in message, message
    assert file in message and "\n" not in message


def test_train_stops_on_a_missing_task_file_naming_the_task(tiny_models, tmp_path, capsys):
    config = multitask_config(tmp_path, tiny_models["gpt2"])
    (tmp_path / "data" / "count_train.jsonl").unlink()
    assert main(["train", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "tasks[1] (count): data.train_path" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    "record", [{"text": "red cat"}, {"text": "red cat", "task": None}, "red cat", [1, 2]]
)
def test_bank_record_without_task_is_an_error_record_saying_so(tmp_path, record):
    from softprompt.inference.predict_io import split_by_task

    source = tmp_path / "in.jsonl"
    source.write_text(
        json.dumps({"text": "x", "task": "colour"}) + "\n" + json.dumps(record) + "\n"
    )
    order, files = split_by_task(str(source), ["colour", "count"], tmp_path)
    assert order[0] == "colour" and list(files) == ["colour"]
    message = order[1].error  # the record answers alone, with its error
    assert order[1].id == "in.jsonl:2"
    assert f"{source}:2" in message and "'task'" in message, message
    assert "colour, count" in message and "got None" not in message, message


def fake_run(directory, log_lines: list[str]):
    """A finished text run as `report` reads it, with these metrics.jsonl lines."""
    directory.mkdir(parents=True)
    results = {"global_step": 3, "methods": ["prompt_tuning"], "test_exact_match": 50.0}
    (directory / "all_results.json").write_text(json.dumps(results))
    (directory / "config.yaml").write_text(yaml.safe_dump({"task": {"type": "text2text"}}))
    (directory / "metrics.jsonl").write_text("\n".join(log_lines) + "\n")
    return directory


GOOD = [
    json.dumps({"event": "train", "step": 1, "loss": 2.0, "learning_rate": 0.1}),
    json.dumps({"event": "eval", "step": 2, "eval_loss": 1.5, "eval_exact_match": 40.0}),
    json.dumps({"event": "train", "step": 3, "loss": 1.0, "learning_rate": 0.1}),
]
ODD = [
    '{"event": "train", "step": 2, "lo',  # torn by a killed writer, then appended after
    "[1, 2]",
    json.dumps({"event": "train", "loss": 1.2}),  # no step
    json.dumps({"event": "train", "step": "4", "loss": 1.2}),
    "not json at all",
]


@pytest.mark.parametrize("odd", ODD)
@pytest.mark.parametrize("where", [1, 3])
def test_odd_metrics_lines_are_skipped_with_one_warning(tmp_path, caplog, odd, where):
    run = fake_run(tmp_path / "run", [*GOOD[:where], odd, odd, *GOOD[where:]])
    with caplog.at_level(logging.WARNING, logger="softprompt"):
        assert main(["report", str(run), "--no-progress"]) == 0
    warned = [r.getMessage() for r in caplog.records if "metrics.jsonl" in r.getMessage()]
    assert len(warned) == 1, warned
    assert f"metrics.jsonl:{where + 1} and 1 more: skipped" in warned[0], warned
    assert (run / "report" / "training_curves.png").is_file()


def test_clean_metrics_log_warns_nothing(tmp_path, caplog):
    run = fake_run(tmp_path / "run", GOOD)
    with caplog.at_level(logging.WARNING, logger="softprompt"):
        assert main(["report", str(run), "--no-progress"]) == 0
    assert not [r for r in caplog.records if "metrics.jsonl" in r.getMessage()]
