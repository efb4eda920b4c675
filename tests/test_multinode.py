"""Multi-node launches: two "nodes" on this machine, each its own `torchrun --nnodes 2
--nproc-per-node 1` command meeting at a c10d rendezvous on 127.0.0.1, train what one
process trains, with and without `training.sharding: fsdp`; only global rank 0 writes;
runs resume under another node count.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from helpers import make_config, toy_task, write_config, write_jsonl
from test_distributed import ROOT, assert_same_weights, events, text_sections, user_env

from softprompt.config.run import load_config
from softprompt.train.loop import train

TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node_command(config: Path, nodes: int, endpoint: str, run_id: str, *extra: str) -> list[str]:
    """One node's command, as a user types it on each machine of a cluster."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", str(nodes), "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", run_id,
        "-m", "softprompt", "train", str(config), "--no-progress", *extra,
    ]  # fmt: skip


def launch_nodes(
    config: Path, *extra: str, nodes: int = 2, cwds: list[Path] | None = None
) -> list[subprocess.CompletedProcess]:
    """Start `nodes` node commands at once and wait for all (bounded by TIMEOUT)."""
    endpoint, run_id = f"127.0.0.1:{free_port()}", uuid.uuid4().hex[:8]
    cwds = cwds or [ROOT] * nodes
    started = [
        subprocess.Popen(
            node_command(config, nodes, endpoint, run_id, *extra),
            cwd=cwd,
            env=user_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for cwd in cwds
    ]
    done = []
    try:
        for process in started:
            output, _ = process.communicate(timeout=TIMEOUT)
            done.append(subprocess.CompletedProcess(process.args, process.returncode, output))
    finally:
        for process in started:
            process.kill()
    return done


def assert_all_ok(done: list[subprocess.CompletedProcess]) -> None:
    for node in done:
        assert node.returncode == 0, node.stdout[-5000:]


def lora_sections(model: Path, data: dict, out: Path, batch_size: int, **training) -> dict:
    sections = text_sections(model, data, out, batch_size)
    sections["method"]["lora"] = {"enabled": True, "r": 4, "dropout": 0.0, "learning_rate": 0.01}
    sections["training"].update(training)
    return sections


@pytest.fixture(scope="module")
def node_runs(tiny_models, tmp_path_factory) -> dict:
    """One process, and two nodes of one process each: a prompt, and prompt + LoRA sharded
    (48 examples, 8 per optimizer step, 6 steps)."""
    root = tmp_path_factory.mktemp("nodes")
    data = {
        "train": write_jsonl(root / "train.jsonl", toy_task(48, seed=1)),
        "val": write_jsonl(root / "val.jsonl", toy_task(13, seed=2)),
    }
    model = tiny_models["llama"]
    runs = {"root": root, "data": data, "model": model}
    for name, build in (("prompt", text_sections), ("lora", lora_sections)):
        one = root / f"{name}-one"
        train(load_config(write_config(root / f"{name}-1.yaml", build(model, data, one, 8))))
        runs[f"{name}-one"] = one
    two = root / "prompt-nodes"
    assert_all_ok(launch_nodes(write_config(root / "p2.yaml", text_sections(model, data, two, 4))))
    runs["prompt-nodes"] = two
    sharded = root / "lora-nodes"
    cfg = lora_sections(model, data, sharded, 4, sharding="fsdp")
    runs["lora-output"] = launch_nodes(write_config(root / "l2.yaml", cfg))
    assert_all_ok(runs["lora-output"])
    runs["lora-nodes"] = sharded
    return runs


def test_two_nodes_train_what_one_process_trains(node_runs):
    one, two = node_runs["prompt-one"], node_runs["prompt-nodes"]
    for step in (3, 6):
        assert_same_weights(one / f"checkpoint-{step}", two / f"checkpoint-{step}")
    # Both nodes have a local rank 0; only global rank 0 writes: one line per event.
    assert [e["step"] for e in events(two) if e["event"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert (two / "checkpoint-6" / "rng_state_1.safetensors").is_file()


def test_two_sharded_nodes_train_what_one_process_trains(node_runs):
    one, two = node_runs["lora-one"], node_runs["lora-nodes"]
    output = "".join(node.stdout for node in node_runs["lora-output"])
    assert "transformer blocks sharded over 2 processes" in output
    for adapter in ("prompt", "lora"):
        assert_same_weights(one / "checkpoint-6" / adapter, two / "checkpoint-6" / adapter)
    sharding = json.loads((two / "all_results.json").read_text())["sharding"]
    assert sharding["strategy"] == "fsdp" and len(sharding["per_process"]) == 2


@pytest.mark.parametrize("name", ["prompt", "lora"])
def test_a_two_node_run_resumes_in_one_process(node_runs, name):
    root, model, data = node_runs["root"], node_runs["model"], node_runs["data"]
    build = text_sections if name == "prompt" else lora_sections
    to_one = root / f"{name}-nodes-then-one"
    to_one.mkdir()
    shutil.copytree(node_runs[f"{name}-nodes"] / "checkpoint-3", to_one / "checkpoint-3")
    train(
        load_config(write_config(root / f"{name}-r1.yaml", build(model, data, to_one, 8))), "auto"
    )
    for adapter in ("prompt", "lora") if name == "lora" else ("",):
        assert_same_weights(
            node_runs[f"{name}-one"] / "checkpoint-6" / adapter, to_one / "checkpoint-6" / adapter
        )


def test_a_one_process_run_resumes_on_two_sharded_nodes(node_runs):
    root, model, data = node_runs["root"], node_runs["model"], node_runs["data"]
    to_two = root / "one-then-nodes"
    to_two.mkdir()
    shutil.copytree(node_runs["lora-one"] / "checkpoint-3", to_two / "checkpoint-3")
    cfg = write_config(root / "r2.yaml", lora_sections(model, data, to_two, 4, sharding="fsdp"))
    assert_all_ok(launch_nodes(cfg, "--resume", "auto"))
    assert [e["step"] for e in events(to_two) if e["event"] == "train"] == [4, 5, 6]
    for adapter in ("prompt", "lora"):
        assert_same_weights(
            node_runs["lora-one"] / "checkpoint-6" / adapter, to_two / "checkpoint-6" / adapter
        )


def test_only_global_rank_0_writes_and_resume_needs_one_shared_directory(node_runs, tmp_path):
    """Each node in its own working directory (no shared filesystem), `output_dir` relative:
    the node holding global rank 0 has the whole run, the other nothing; resuming there
    then stops on both nodes, saying the directory must be shared."""
    model, data = node_runs["model"], {"train": node_runs["data"]["train"]}
    raw = make_config(model, data, "run", epochs=1, batch_size=4, save_steps=3, logging_steps=1)
    cfg = write_config(tmp_path / "c.yaml", raw)
    cwds = [tmp_path / "node-a", tmp_path / "node-b"]
    for cwd in cwds:
        cwd.mkdir()
    assert_all_ok(launch_nodes(cfg, cwds=cwds))
    written = [
        sorted(p.name for p in (cwd / "run").glob("*")) if (cwd / "run").exists() else []
        for cwd in cwds
    ]
    full, empty = sorted(written, key=len, reverse=True)
    assert {"checkpoint-6", "best", "metrics.jsonl", "all_results.json"} <= set(full)
    assert empty == []
    done = launch_nodes(cfg, "--resume", "auto", cwds=cwds)
    for node in done:
        assert node.returncode != 0
        assert "must be one directory that every machine reads" in node.stdout
