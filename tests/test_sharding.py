"""Sharded training (`training.sharding: fsdp`): two CPU processes (gloo, FSDP2) under
torchrun train what one process trains, each holding about half of what trains.

One-process runs call `train` directly; the sharded runs are real `torchrun` launches.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_config, toy_task, write_config, write_jsonl
from safetensors.torch import load_file
from test_distributed import events, run

from softprompt.config.run import ConfigError, load_config
from softprompt.train.loop import train

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
# Sums in another order (a reduce-scatter, two half batches) differ in the last bits.
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}
METHODS = {
    "full": {"full": {"enabled": True, "learning_rate": 0.01}},
    "lora": {"lora": {"enabled": True, "r": 4, "dropout": 0.0, "learning_rate": 0.01}},
}


def torchrun_two(config: Path, *extra: str) -> str:
    command = [*TORCHRUN, "-m", "softprompt", "train", str(config)]
    return run([*command, "--no-progress", *extra])


def sections(model: Path, data: dict, out: Path, method: str, batch_size: int, **training):
    return make_config(
        model,
        data,
        out,
        method=METHODS[method],
        epochs=1,
        batch_size=batch_size,
        learning_rate=0.01,
        logging_steps=1,
        save_steps=3,
        save_total_limit=None,
        eval_generate=False,
        **training,
    )


def weights(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(directory.rglob("*.safetensors")):
        out.update({f"{file.parent.name}/{k}": v for k, v in load_file(str(file)).items()})
    return out


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], **TOLERANCE, msg=name)


@pytest.fixture(scope="module")
def sharded_runs(tiny_models, tmp_path_factory) -> dict:
    """Full fine-tuning and LoRA of tiny Llama and T5, in one process and sharded over two
    (48 examples, 8 per optimizer step, 6 steps)."""
    root = tmp_path_factory.mktemp("sharded")
    data = {
        "train": write_jsonl(root / "train.jsonl", toy_task(48, seed=1)),
        "val": write_jsonl(root / "val.jsonl", toy_task(13, seed=2)),
    }
    runs = {}
    for kind in ("llama", "t5"):
        for method in METHODS:
            name = f"{kind}-{method}"
            one, two = root / f"{name}-one", root / f"{name}-two"
            model = tiny_models[kind]
            train(
                load_config(
                    write_config(root / f"{name}-1.yaml", sections(model, data, one, method, 8))
                )
            )
            cfg = sections(model, data, two, method, 4, sharding="fsdp")
            output = torchrun_two(write_config(root / f"{name}-2.yaml", cfg))
            runs[name] = {"one": one, "two": two, "output": output, "model": model}
    runs["root"], runs["data"] = root, data
    return runs


@pytest.mark.parametrize("name", ["llama-full", "llama-lora", "t5-full", "t5-lora"])
def test_sharded_run_trains_what_one_process_trains(sharded_runs, name):
    one, two = sharded_runs[name]["one"], sharded_runs[name]["two"]
    assert "transformer blocks sharded over 2 processes" in sharded_runs[name]["output"]
    for step in (3, 6):
        assert_same_weights(one / f"checkpoint-{step}", two / f"checkpoint-{step}")
    assert_same_weights(one / "best", two / "best")
    loss_one = [e["loss"] for e in events(one) if e["event"] == "train"]
    loss_two = [e["loss"] for e in events(two) if e["event"] == "train"]
    assert loss_two == pytest.approx(loss_one, rel=1e-4)
    (eval_one,) = [e for e in events(one) if e["event"] == "eval"]
    (eval_two,) = [e for e in events(two) if e["event"] == "eval"]
    assert eval_two["eval_loss"] == pytest.approx(eval_one["eval_loss"], rel=1e-5)
    # best/ is the whole, unsharded bundle: its test/val scores match too.
    one_results = json.loads((one / "all_results.json").read_text())
    two_results = json.loads((two / "all_results.json").read_text())
    assert two_results["val_loss"] == pytest.approx(one_results["val_loss"], rel=1e-5)


@pytest.mark.parametrize("name", ["llama-full", "llama-lora", "t5-full", "t5-lora"])
def test_each_process_holds_about_half_of_what_trains(sharded_runs, name):
    results = json.loads((sharded_runs[name]["two"] / "all_results.json").read_text())
    sharding = results["sharding"]
    assert sharding["strategy"] == "fsdp" and sharding["processes"] == 2
    total = sharding["trainable_parameters"]
    assert total == results["trainable_parameters"]
    # The local shard elements each process holds, counted after sharding, are those the
    # shapes give (the blocks split in two; what else trains whole on both).
    for measured, estimate in zip(sharding["per_process"], sharding["estimate"], strict=True):
        assert measured["trainable_parameters"] == estimate["trainable_parameters"]
        assert measured["optimizer_state_elements"] == 2 * measured["trainable_parameters"]
    shares = [r["trainable_parameters"] / total for r in sharding["per_process"]]
    replicated = 1 - sharding["sharded_trainable_parameters"] / total
    assert sum(shares) == pytest.approx(1 + replicated, abs=1e-9)
    assert all(share == pytest.approx((1 + replicated) / 2, abs=0.02) for share in shares)
    # The sharded part (LoRA, or the blocks of a full fine-tune) is split exactly in two.
    halves = [e["trainable_sharded"] for e in sharding["estimate"]]
    assert sum(halves) == sharding["sharded_trainable_parameters"] > 0
    assert halves[0] == halves[1]
    one = json.loads((sharded_runs[name]["one"] / "all_results.json").read_text())
    assert one["sharding"] == {"strategy": "none"}


@pytest.mark.parametrize("name", ["llama-full", "t5-lora"])
def test_sharded_checkpoint_resumes_in_one_process_and_back(sharded_runs, name):
    root, data = sharded_runs["root"], sharded_runs["data"]
    one, two, model = (sharded_runs[name][k] for k in ("one", "two", "model"))
    method = name.split("-")[1]
    # Written sharded by two processes, finished by one, unsharded.
    to_one = root / f"{name}-two-then-one"
    to_one.mkdir()
    shutil.copytree(two / "checkpoint-3", to_one / "checkpoint-3")
    cfg = write_config(root / f"{name}-to1.yaml", sections(model, data, to_one, method, 8))
    train(load_config(cfg), resume="auto")
    assert_same_weights(to_one / "checkpoint-6", one / "checkpoint-6")
    # Written by one process, finished sharded by two: whole optimizer state is split.
    to_two = root / f"{name}-one-then-two"
    to_two.mkdir()
    shutil.copytree(one / "checkpoint-3", to_two / "checkpoint-3")
    cfg = sections(model, data, to_two, method, 4, sharding="fsdp")
    torchrun_two(write_config(root / f"{name}-to2.yaml", cfg), "--resume", "auto")
    assert_same_weights(to_two / "checkpoint-6", one / "checkpoint-6")
    assert [e["step"] for e in events(to_two) if e["event"] == "train"] == [4, 5, 6]


def test_accelerate_sharding_engines_name_training_sharding(
    tiny_models, toy_data, tmp_path, monkeypatch
):
    cfg = write_config(
        tmp_path / "c.yaml", make_config(tiny_models["llama"], toy_data, tmp_path / "r")
    )
    for variable in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP"):
        with monkeypatch.context() as patched:
            patched.setenv(variable, "true")
            with pytest.raises(ConfigError, match="training.sharding: fsdp"):
                train(load_config(cfg))


def test_sharding_refuses_quantized_weights(tiny_models, toy_data, tmp_path):
    raw = make_config(tiny_models["llama"], toy_data, tmp_path / "r", sharding="fsdp")
    raw["method"]["lora"] = {"enabled": True, "quantization_bit": 4}
    with pytest.raises(ConfigError, match="quantization_bit"):
        load_config(write_config(tmp_path / "q.yaml", raw))


def test_one_process_with_fsdp_shards_nothing(tiny_models, toy_data, tmp_path, caplog):
    raw = make_config(tiny_models["llama"], toy_data, tmp_path / "r", method=METHODS["lora"])
    raw["training"].update(sharding="fsdp", max_steps=2, eval_generate=False)
    with caplog.at_level("INFO", logger="softprompt"):
        results = train(load_config(write_config(tmp_path / "c.yaml", raw)))
    assert "one process: nothing to shard" in caplog.text
    assert results["sharding"] == {"strategy": "none"}


def test_sharded_bf16_run_trains_what_one_process_trains(sharded_runs):
    """bf16 autocast over sharded blocks: float32 master weights, so the two runs differ
    only by bf16 matmuls on half batches. Adam turns that noise in near-zero gradients
    (LoRA's A while B is still near 0) into steps up to the learning rate (0.01); the
    losses stay within 0.1%."""
    root, data, model = (
        sharded_runs["root"],
        sharded_runs["data"],
        sharded_runs["llama-lora"]["model"],
    )
    one, two = root / "bf16-one", root / "bf16-two"
    train(
        load_config(
            write_config(root / "bf16-1.yaml", sections(model, data, one, "lora", 8, bf16=True))
        )
    )
    cfg = sections(model, data, two, "lora", 4, bf16=True, sharding="fsdp")
    assert "transformer blocks sharded" in torchrun_two(write_config(root / "bf16-2.yaml", cfg))
    loss_one = [e["loss"] for e in events(one) if e["event"] == "train"]
    loss_two = [e["loss"] for e in events(two) if e["event"] == "train"]
    assert loss_two == pytest.approx(loss_one, rel=2e-3)
    wa, wb = weights(one / "best"), weights(two / "best")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=1e-2, msg=name)
