"""`training.report_to: [tensorboard]` and the progress line (loss, lr, samples/s, ETA)."""

from __future__ import annotations

import io
import json
import logging
import shutil
from types import SimpleNamespace

import pytest
from helpers import make_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tqdm.auto import tqdm

from softprompt.config.run import ConfigError, RunConfig, build_config
from softprompt.train.dashboards import (
    eta_seconds,
    format_duration,
    progress_fields,
    scalars,
    show_progress,
)
from softprompt.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")


TRAINING = {
    "epochs": 2,
    "batch_size": 8,
    "learning_rate": 0.3,
    "logging_steps": 1,
    "eval_generate": False,
    "save_total_limit": None,
}


def run_config(model_dir, data, out, **training) -> RunConfig:
    return build_config(make_config(model_dir, data, out, training=TRAINING, **training))


def read_events(run_dir) -> EventAccumulator:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return events


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_values(run_dir) -> int:
    """Every number of metrics.jsonl is in TensorBoard at its step, once; returns a count."""
    events = read_events(run_dir)
    expected: dict[str, dict[int, float]] = {}
    for record in read_metrics(run_dir):
        for tag, value in scalars(record).items():
            expected.setdefault(tag, {})[record["step"]] = value
    assert set(expected) <= set(events.Tags()["scalars"])
    for tag, by_step in expected.items():
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == sorted(by_step), tag  # once per step, in order
        for event in logged:
            # Event files store float32.
            assert event.value == pytest.approx(by_step[event.step], rel=1e-6, abs=1e-12), tag
    return sum(len(v) for v in expected.values())


def test_tensorboard_scalars_equal_metrics_jsonl(tiny_models, toy_data, tmp_path):
    out = tmp_path / "run"
    train(run_config(tiny_models["gpt2"], toy_data, out, report_to="tensorboard"))
    assert any((out / "tensorboard").glob("events.out.tfevents.*"))
    assert assert_same_values(out) > 10
    tags = read_events(out).Tags()["scalars"]
    for tag in ("train/loss", "train/learning_rate", "train/samples_per_second", "eval/loss"):
        assert tag in tags


def test_resumed_run_logs_each_step_once(tiny_models, toy_data, tmp_path):
    out = tmp_path / "run"
    config = run_config(tiny_models["gpt2"], toy_data, out, report_to=["tensorboard"], save_steps=4)
    train(config)
    # Resume from step 4: steps 5.. are logged again; TensorBoard hides the first ones.
    for later in out.glob("checkpoint-*"):
        if later.name != "checkpoint-4":
            shutil.rmtree(later)
    train(config, resume=str(out / "checkpoint-4"))
    assert assert_same_values(out) > 10


def test_no_dashboard_by_default_and_bad_names_refused(tiny_models, toy_data, tmp_path):
    out = tmp_path / "run"
    config = run_config(tiny_models["gpt2"], toy_data, out, max_steps=1)
    assert config.training.report_to == []
    assert run_config(tiny_models["gpt2"], toy_data, out, report_to="none").training.report_to == []
    train(config)
    assert not (out / "tensorboard").exists()
    with pytest.raises(ConfigError, match="report_to"):
        run_config(tiny_models["gpt2"], toy_data, out, report_to=["wandb"])


def test_progress_line_without_a_bar(tiny_models, toy_data, tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="softprompt"):
        train(run_config(tiny_models["gpt2"], toy_data, out, max_steps=3), progress=False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert len(lines) == 3 and lines[0].startswith("step 1/3: loss=")
    for field in ("lr=", "samples/s=", "eta="):
        assert field in lines[0]
    assert lines[-1].endswith("eta=0:00:00")


def test_progress_bar_postfix():
    record = {"step": 10, "loss": 1.23456, "learning_rate": 3e-4, "samples_per_second": 20.0}
    run = SimpleNamespace(total_steps=110, examples_per_step=8, main=True)
    stream = io.StringIO()
    bar = tqdm(total=110, file=stream, disable=False, mininterval=0)
    show_progress(run, record, bar)
    bar.refresh()
    text = stream.getvalue()
    # 100 steps x 8 examples at 20 examples/s: 40 s left.
    assert "loss=1.2346" in text and "lr=3.00e-04" in text and "eta=0:00:40" in text
    assert "samples/s=20.0" in text
    bar.close()
    assert eta_seconds(5, 5, 8, 0.0) == 0.0
    assert format_duration(float("inf")) == "?" and format_duration(3725.2) == "1:02:05"
    assert progress_fields(record, 90.0)["eta"] == "0:01:30"
