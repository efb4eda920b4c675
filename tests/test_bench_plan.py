"""`make bench` / `make bench-full` (bench/run_all.py): the plan names real scripts and flags,
and the quality scripts' summaries read their runs right."""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

run_all = importlib.import_module("run_all")


def test_every_planned_script_exists_and_takes_its_flags():
    for name, args in {**run_all.SPEED, **run_all.QUALITY}.items():
        script = ROOT / "bench" / name.split()[0]
        assert script.is_file(), name
        source = script.read_text(encoding="utf-8")
        for flag in (a for a in args if a.startswith("--")):
            assert f'"{flag}"' in source, f"{name}: {flag} is not an option of {script.name}"


def test_the_makefile_runs_the_plan():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^bench: .*\n\t\$\(PY\) bench/run_all.py$", makefile, re.M)
    assert re.search(
        r"^bench-full: .*\n(\t.*\n)*\t\$\(PY\) bench/run_all.py --full$", makefile, re.M
    )


def test_totals_need_every_script_of_a_target(tmp_path, monkeypatch):
    monkeypatch.setattr(run_all, "OUT", tmp_path / "bench_times.json")
    first = dict.fromkeys(run_all.SPEED, {"seconds": 60.0, "status": 0})
    totals = run_all.record_times(first)
    assert totals["make_bench"]["minutes"] == len(run_all.SPEED)
    assert totals["make_bench_full"]["minutes"] is None  # the quality runs have not run
    totals = run_all.record_times(dict.fromkeys(run_all.QUALITY, {"seconds": 120.0, "status": 0}))
    expected = len(run_all.SPEED) + 2 * len(run_all.QUALITY)
    assert totals["make_bench_full"]["minutes"] == expected
    failed = {next(iter(run_all.SPEED)): {"seconds": 1.0, "status": 1}}
    assert run_all.record_times(failed)["make_bench"]["minutes"] is None
    assert (
        json.loads((tmp_path / "bench_times.json").read_text())["make_bench"]["budget_minutes"]
        == 15
    )


def test_demo_seeds_counts_answers_by_question_type(tmp_path):
    demo_seeds = importlib.import_module("demo_seeds")
    records = [
        {
            "question": "What shape is in the image?",
            "prediction": "circle",
            "references": ["circle"],
        },
        {"question": "What color is the shape?", "prediction": "red", "references": ["blue"]},
        {"question": "Is there a red shape?", "prediction": " Yes", "references": ["yes"]},
        {"question": "Is there not a circle?", "prediction": "no", "references": ["yes"]},
    ]
    path = tmp_path / "predictions.test.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    assert demo_seeds.by_type(path) == {
        "shape": 100.0,
        "colour": 0.0,
        "yes/no": 100.0,
        "negated yes/no": 0.0,
    }


def test_aclsum_summary_spans_the_seeds_that_ran_each_method():
    aclsum = importlib.import_module("aclsum_methods")
    runs = [
        {"rows": {"zero-shot": {"test_rougeL": 18.0}, "prompt": {"test_rougeL": 20.0}}},
        {"rows": {"prompt": {"test_rougeL": 24.0}}},
    ]
    summary = aclsum.summarise(runs)
    assert summary["zero-shot"]["mean"] == 18.0 and summary["zero-shot"]["std"] == 0.0
    assert summary["prompt"]["mean"] == 22.0
    assert abs(summary["prompt"]["std"] - 2.8284271) < 1e-6


def test_aclsum_table_shows_every_seed_and_the_mean(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    quality = importlib.import_module("results_quality")
    tables = importlib.import_module("results_tables")
    rows = {"prompt": {"test_rougeL": 20.0, "trainable_parameters": 11520}}
    runs = [
        {"seed": 1, "rows": {"prompt": {**rows["prompt"], "test_rougeL": 24.0}}},
        {
            "seed": 0,
            "rows": {**rows, "zero-shot": {"test_rougeL": 18.0, "trainable_parameters": 0}},
        },
    ]
    summary = importlib.import_module("aclsum_methods").summarise(runs)
    (tmp_path / "aclsum_methods.json").write_text(
        json.dumps({"runs": runs, "test_rougeL": summary})
    )
    text = quality.aclsum_methods(tables.Results(tmp_path))
    assert text.splitlines()[0] == "| method | trainable params | seed 0 | seed 1 | mean ± std |"
    assert "| zero-shot | 0 | 18.00 | - | 18.00 |" in text
    assert "| prompt | 11,520 | 20.00 | 24.00 | 22.00 ± 2.83 |" in text
