"""The training engine: learning, checkpoints, exact resume, best/, all_results.json."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import make_config, prompt_method
from safetensors.torch import load_file

from softprompt.config.run import ConfigError, RunConfig, build_config
from softprompt.train.checkpoint import (
    CheckpointError,
    find_latest_checkpoint,
    validate_checkpoint,
)
from softprompt.train.loop import train
from softprompt.train.run_files import MetricsLog

TRAINING = {
    "epochs": 4,
    "batch_size": 8,
    "learning_rate": 0.5,
    "logging_steps": 1,
    "eval_generate": False,
    "save_total_limit": None,
}
PROMPT = prompt_method(num_virtual_tokens=8)
TASK = {"max_new_tokens": 3}


def run_config(model_dir, data, out, **training) -> RunConfig:
    raw = make_config(model_dir, data, out, method=PROMPT, task=TASK, training=TRAINING, **training)
    return build_config(raw)


def prompt_of(directory):
    return load_file(str(directory / "adapter_model.safetensors"))["prompt_embeddings"]


@pytest.mark.parametrize("kind", ["gpt2", "llama", "t5"])
def test_loss_falls_and_run_dir_is_complete(tiny_models, toy_data, tmp_path, kind):
    out = tmp_path / "run"
    results = train(run_config(tiny_models[kind], toy_data, out))
    losses = [e["eval_loss"] for e in results["evaluations"]]
    assert losses[-1] < losses[0] - 0.05, losses
    for name in ("config.yaml", "metrics.jsonl", "all_results.json", "best"):
        assert (out / name).exists(), name
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["best_metric"] == min(losses)
    assert saved["trainable_parameters"] == 8 * 32
    events = [
        json.loads(line)["event"] for line in (out / "metrics.jsonl").read_text().splitlines()
    ]
    assert events.count("eval") == len(losses) and "train" in events
    assert (out / "best" / "adapter_config.json").is_file()


def test_resume_gives_the_same_prompt_as_an_uninterrupted_run(tiny_models, toy_data, tmp_path):
    # GPT-2 has dropout, so this also checks that the RNG state is restored.
    full = tmp_path / "full"
    train(run_config(tiny_models["gpt2"], toy_data, full, save_steps=5, epochs=3))
    final = find_latest_checkpoint(full)
    assert final is not None and final.name == "checkpoint-18"

    # Another run "killed" after step 10: resume it from its checkpoint-10.
    part = tmp_path / "part"
    part.mkdir()
    shutil.copytree(full / "checkpoint-10", part / "checkpoint-10")
    cfg = run_config(tiny_models["gpt2"], toy_data, part, save_steps=5, epochs=3)
    train(cfg, resume="auto")
    assert torch.equal(prompt_of(part / "checkpoint-18"), prompt_of(final))
    assert not torch.equal(prompt_of(full / "checkpoint-10"), prompt_of(final))


def test_gradient_accumulation_matches_a_bigger_batch(tiny_models, toy_data, tmp_path):
    cfg_a = run_config(
        tiny_models["llama"],
        toy_data,
        tmp_path / "a",
        batch_size=4,
        gradient_accumulation_steps=2,
        epochs=1,
        group_by_length=False,
        max_grad_norm=None,
    )
    cfg_b = run_config(
        tiny_models["llama"],
        toy_data,
        tmp_path / "b",
        batch_size=8,
        epochs=1,
        group_by_length=False,
        max_grad_norm=None,
    )
    train(cfg_a)
    train(cfg_b)
    a = prompt_of(find_latest_checkpoint(tmp_path / "a"))
    b = prompt_of(find_latest_checkpoint(tmp_path / "b"))
    # Without length grouping, two batches of 4 are the two halves of one batch of 8,
    # and the step's loss is normalised by the tokens of the whole step.
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_incomplete_and_damaged_checkpoints_are_skipped(tiny_models, toy_data, tmp_path):
    out = tmp_path / "run"
    train(run_config(tiny_models["gpt2"], toy_data, out, save_steps=4, epochs=2))
    latest = find_latest_checkpoint(out)
    assert latest.name == "checkpoint-12"
    # A checkpoint that was being written when the process died has no trainer_state.json.
    half = out / "checkpoint-16"
    shutil.copytree(latest, half)
    (half / "trainer_state.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        validate_checkpoint(half)
    # One whose files changed after writing fails its checksum.
    damaged = out / "checkpoint-20"
    shutil.copytree(latest, damaged)
    (damaged / "optimizer.safetensors").write_bytes(b"garbage")
    assert find_latest_checkpoint(out) == latest


def test_early_stopping_and_best_metric(tiny_models, toy_data, tmp_path):
    # A tiny learning rate never improves eval_loss enough... use a metric that cannot
    # improve: patience 1 on a constant-ish metric stops after the second evaluation.
    cfg = run_config(
        tiny_models["gpt2"],
        toy_data,
        tmp_path / "r",
        learning_rate=1e-9,
        eval_steps=1,
        early_stopping_patience=1,
        metric_for_best_model="eval_num_samples",
    )
    results = train(cfg)
    assert results["global_step"] == 2
    assert results["best_step"] == 1


def test_unknown_best_metric_fails_with_available_names(tiny_models, toy_data, tmp_path):
    cfg = run_config(
        tiny_models["gpt2"], toy_data, tmp_path / "r", metric_for_best_model="eval_acc"
    )
    with pytest.raises(ConfigError, match="eval_loss"):
        train(cfg)


def test_metrics_log_repairs_a_torn_line_and_forgets_replayed_steps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"event": "train", "step": s} for s in (10, 20, 30)] + [{"event": "test"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"event": "tr')
    log = MetricsLog(path, enabled=True)
    assert path.read_text().endswith("\n")  # the torn line is gone
    log.forget_after(20)
    assert [json.loads(x) for x in path.read_text().splitlines()] == [lines[0], lines[1], lines[3]]
    log.write({"event": "train", "step": 30})
    assert json.loads(path.read_text().splitlines()[-1]) == {"event": "train", "step": 30}
    MetricsLog(tmp_path / "other.jsonl", enabled=False).forget_after(0)  # absent: no-op
    assert not (tmp_path / "other.jsonl").exists()


def test_metrics_log_keeps_lines_it_cannot_read_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('not json\n[1, 2]\n{"event": "train", "step": 40}\n')
    MetricsLog(path, enabled=True).forget_after(20)
    assert path.read_text() == "not json\n[1, 2]\n"


def test_a_fresh_start_refuses_an_earlier_run_and_overwrite_replaces_it(
    tiny_models, toy_data, tmp_path
):
    out = tmp_path / "run"
    first = train(run_config(tiny_models["llama"], toy_data, out, max_steps=3, seed=1))
    assert first["global_step"] == 3
    old_best = prompt_of(out / "best")
    with pytest.raises(ConfigError, match=r"earlier run \(checkpoint-3.*overwrite_output_dir"):
        train(run_config(tiny_models["llama"], toy_data, out, max_steps=2, seed=2))
    assert torch.equal(prompt_of(out / "best"), old_best)  # nothing was touched

    again = run_config(
        tiny_models["llama"], toy_data, out, max_steps=2, seed=2, overwrite_output_dir=True
    )
    train(again)
    assert not (out / "checkpoint-3").exists() and (out / "checkpoint-2").is_dir()
    assert not torch.equal(prompt_of(out / "best"), old_best)
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps and max(steps) == 2  # the earlier run's lines are gone


def test_without_validation_best_is_the_last_step_also_after_a_resume(
    tiny_models, toy_data, tmp_path
):
    out = tmp_path / "run"

    def config(steps):
        cfg = run_config(tiny_models["llama"], toy_data, out, max_steps=steps, save_steps=2)
        return build_config({**cfg.model_dump(mode="json"), "data": {
            **cfg.data.model_dump(mode="json"), "validation": False}})  # fmt: skip

    train(config(2))
    assert torch.equal(prompt_of(out / "best"), prompt_of(out / "checkpoint-2"))
    train(config(4), resume="auto")  # more steps than the run that wrote best/
    assert torch.equal(prompt_of(out / "best"), prompt_of(out / "checkpoint-4"))
    assert not torch.equal(prompt_of(out / "best"), prompt_of(out / "checkpoint-2"))
