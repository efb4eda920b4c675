"""`softprompt sweep`: grid parsing and checks, a real tiny sweep, resuming, failing cells."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import make_config, write_config

from softprompt.commands.cli import main
from softprompt.config.run import ConfigError
from softprompt.workflows import sweep as sweep_module
from softprompt.workflows.sweep import (
    Axis,
    check_cells,
    default_output_dir,
    make_cells,
    parse_grid,
    safe_value,
    short_keys,
    sweep,
)

NVT = "method.prompt_tuning.num_virtual_tokens"
INIT = "method.prompt_tuning.init_method"


@pytest.fixture(autouse=True)
def _one_thread_children(monkeypatch, one_thread):
    # The cells' training processes inherit this: the 2 shared cores stay usable.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def sweep_config(tmp_path, model_dir, data):
    raw = make_config(
        model_dir,
        data,
        tmp_path / "unused",
        task={"max_new_tokens": 3},
        max_steps=2,
        batch_size=8,
        eval_generate=False,
        learning_rate=0.1,
    )
    return write_config(tmp_path / "config.yaml", raw)


def test_grid_values_and_cell_names():
    axes = parse_grid(
        [
            f"{NVT}=5, 10",
            "prompt_tuning.initialization=RANDOM,TEXT",  # an older key name, mapped
            'method.prompt_tuning.init_text="Summarize, briefly.",a/b',
        ]
    )
    assert axes[0] == Axis(NVT, ("5", "10"))
    assert axes[1].key == INIT
    assert axes[2].values == ("Summarize, briefly.", "a/b")
    cells = make_cells(axes)
    assert len(cells) == 8
    first = cells[0]
    text = "method.prompt_tuning.init_text"
    assert first.settings == {NVT: "5", INIT: "RANDOM", text: "Summarize, briefly."}
    assert first.name.startswith("num_virtual_tokens=5,init_method=RANDOM,init_text=Summarize")
    assert "/" not in cells[1].name and " " not in first.name
    assert cells[-1].overrides[0] == f"{NVT}=10"  # the first grid varies slowest
    assert len({cell.name for cell in cells}) == 8
    # Values that clean up to the same text still get different names.
    assert safe_value("a/b") != safe_value("a_b") == "a_b"
    assert len(safe_value("x" * 500)) < 60


def test_short_keys_keep_colliding_names_apart():
    short = short_keys(["training.learning_rate", "method.lora.learning_rate", "training.seed"])
    assert short == {
        "training.learning_rate": "training.learning_rate",
        "method.lora.learning_rate": "lora.learning_rate",
        "training.seed": "seed",
    }


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ([f"{NVT[:-1]}=5,10"], f"did you mean '{NVT}'"),
        (["method.prompt_tuning=5"], "is a section"),
        ([f"{NVT}="], "no values given"),
        ([f"{NVT}=5,,10"], "an empty value"),
        ([f"{NVT}=5,5"], "5 given more than once"),
        ([f"{NVT}=5", f"{NVT}=10"], "given twice"),
        ([f"{NVT}"], "must look like KEY=V1,V2"),
        (["training.output_dir=a,b"], "own folder"),
        ([], "at least one --grid"),
    ],
)
def test_bad_grids_are_refused(grid, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid(grid)


def test_a_bad_value_fails_before_anything_trains(tiny_models, toy_data, tmp_path, capsys):
    config = sweep_config(tmp_path, tiny_models["gpt2"], toy_data)
    out = tmp_path / "sweep"
    argv = ["sweep", str(config), "--grid", f"{NVT}=2,0", "--output-dir", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "num_virtual_tokens=0" in err and NVT in err and "(got 0)" in err
    assert not out.exists()  # not even the valid cell ran
    assert main(["sweep", str(config), "--grid", f"{NVT[:-1]}=2"]) == 2
    assert f"did you mean '{NVT}'" in capsys.readouterr().err


def test_cells_may_set_what_the_file_lacks(tiny_models, toy_data, tmp_path):
    config = sweep_config(tmp_path, tiny_models["gpt2"], toy_data)
    text_init = ["method.prompt_tuning.init_method=TEXT"]  # invalid alone: needs init_text
    grid = ["method.prompt_tuning.init_text=cat dog,red"]
    out = default_output_dir(config, text_init, grid)
    assert out == tmp_path / "unused" / "sweep"
    check_cells(config, text_init, make_cells(parse_grid(grid)), out)
    with pytest.raises(ConfigError, match="sweep cell init_method=TEXT: .*init_text"):
        default_output_dir(config, [], [f"{INIT}=TEXT,RANDOM"])


def test_sweep_trains_each_cell_and_resumes_an_interrupted_one(
    tiny_models, toy_data, tmp_path, capsys
):
    config = sweep_config(tmp_path, tiny_models["gpt2"], toy_data)
    out = tmp_path / "sweep"
    argv = ["sweep", str(config), "--grid", f"{NVT}=2,3", "--grid", f"{INIT}=RANDOM,VOCAB"]
    argv += ["--output-dir", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "sweep.json").read_text())
    names = [row["cell"] for row in record["rows"]]
    assert names == [
        "num_virtual_tokens=2,init_method=RANDOM",
        "num_virtual_tokens=2,init_method=VOCAB",
        "num_virtual_tokens=3,init_method=RANDOM",
        "num_virtual_tokens=3,init_method=VOCAB",
    ]
    for row in record["rows"]:
        assert row["trainable_parameters"] == int(row["settings"][NVT]) * 32  # hidden size 32
        assert row["best_step"] == 2 and row["peak_memory_mb"] > 0 and row["train_runtime"] > 0
        assert row["metric"] == "eval_loss" and row["best_metric"] > 0
    assert record["failures"] == [] and record["grid"][INIT] == ["RANDOM", "VOCAB"]
    table = (out / "sweep.md").read_text()
    assert table.splitlines()[0].startswith(
        "| num_virtual_tokens | init_method | trainable params | train time (s) |"
    )
    assert "| 3 | VOCAB | 96 |" in table and table in printed

    # Interrupt one cell after its last checkpoint: only that cell trains again.
    again = out / names[1]
    (again / "all_results.json").unlink()
    assert (again / "checkpoint-2").is_dir()
    finished = [out / name / "all_results.json" for name in names if name != names[1]]
    stamps = [path.stat().st_mtime_ns for path in finished]
    assert main(argv) == 0
    assert [path.stat().st_mtime_ns for path in finished] == stamps
    assert "Resumed from" in (again / "train.log").read_text()
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [row["cell"] for row in rows] == names
    assert [row["resumed"] for row in rows] == [False, True, False, False]
    capsys.readouterr()

    # The same folder with another budget would mix two configs in one table.
    assert main([argv[0], argv[1], "training.learning_rate=0.2", *argv[2:]]) == 2
    assert "training.learning_rate: 0.1 -> 0.2" in capsys.readouterr().err


def test_a_failing_cell_is_reported_and_the_others_still_run(
    tiny_models, toy_data, tmp_path, capsys
):
    config = sweep_config(tmp_path, tiny_models["gpt2"], toy_data)
    out = tmp_path / "sweep"
    # An unknown metric passes the config check and fails at the first evaluation.
    grid = "training.metric_for_best_model=eval_bogus,eval_loss"
    assert main(["sweep", str(config), "--grid", grid, "--output-dir", str(out)]) == 1
    captured = capsys.readouterr()
    assert "1 cell(s) failed: metric_for_best_model=eval_bogus" in captured.err
    record = json.loads((out / "sweep.json").read_text())
    assert [row["cell"] for row in record["rows"]] == ["metric_for_best_model=eval_loss"]
    (failure,) = record["failures"]
    assert failure["reason"] == "training exited with status 2"
    assert any("eval_bogus" in line for line in failure["log_tail"])
    assert "Failed:" in (out / "sweep.md").read_text()


def test_fail_fast_stops_at_the_first_failure(tiny_models, toy_data, tmp_path, monkeypatch):
    config = sweep_config(tmp_path, tiny_models["gpt2"], toy_data)
    ran, seen = [], []

    def failing_run(config, overrides, cell, cell_dir):
        table = out / "sweep.json"  # rewritten after each cell
        seen.append(json.loads(table.read_text())["not_run"] if table.exists() else None)
        ran.append(cell.name)
        return 3

    monkeypatch.setattr(sweep_module, "run_cell", failing_run)
    out = tmp_path / "sweep"
    result = sweep(config, [], [f"{NVT}=2,3,4"], out, fail_fast=True)
    assert ran == ["num_virtual_tokens=2"]
    assert result.not_run == ["num_virtual_tokens=3", "num_virtual_tokens=4"]
    assert result.failures[0]["reason"] == "training exited with status 3"
    assert "Not run (stopped at the first failure)" in (out / "sweep.md").read_text()
    shutil.rmtree(out)
    ran.clear()
    result = sweep(config, [], [f"{NVT}=2,3"], out, fail_fast=False)
    assert ran == ["num_virtual_tokens=2", "num_virtual_tokens=3"] and len(result.failures) == 2
    assert seen[-1] == ["num_virtual_tokens=3"] and result.not_run == []
