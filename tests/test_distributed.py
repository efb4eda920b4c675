"""Data-parallel training: two CPU processes (gloo) train the prompt one process trains.

The two-process runs are real launches (`accelerate launch`, and `softprompt train
--launcher accelerate`) in subprocesses; one-process runs call `train` directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from helpers import (
    image_folders,
    make_config,
    prompt_method,
    toy_task,
    write_config,
    write_jsonl,
)
from safetensors.torch import load_file

from softprompt.artifacts.prompt_dir import save_prompt
from softprompt.backbones.base import EncodeSettings
from softprompt.backbones.loading import load_backbone
from softprompt.commands.cli import main
from softprompt.config.run import load_config
from softprompt.data.batching import position_in_epoch, split_step
from softprompt.data.text import load_text_examples
from softprompt.inference.evaluate import WHOLE_SET, EvalShard, evaluate, fixed_prompt
from softprompt.tasks.kinds import TextTask
from softprompt.train.checkpoint import (
    TrainState,
    find_latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
)
from softprompt.train.launch import accelerate_launch_command
from softprompt.train.loop import train
from softprompt.train.parallel import micro_batches

ROOT = Path(__file__).resolve().parent.parent
CPU_CONFIG = ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"
ACCELERATE_LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]
# Float sums in another order (two half batches, a gradient all-reduce) differ in the
# last bits; over a few Adam steps that stays far below these.
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


def user_env(**env: str) -> dict[str, str]:
    """The environment a user's command runs in, with this checkout's package first."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), full_env.get("PYTHONPATH", "")])
    full_env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    full_env.update(env)
    return full_env


def run(command: list[str], **env: str) -> str:
    """Run a command as a user would (this checkout's package first); returns its output."""
    done = subprocess.run(
        command, env=user_env(**env), cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{command}\n{done.stdout[-5000:]}\n{done.stderr[-5000:]}"
    return done.stdout + done.stderr


def launch_two(config: Path, *extra: str) -> str:
    """`accelerate launch` with the shipped CPU config, exactly as its first line says."""
    command = [*ACCELERATE_LAUNCH, "--config_file", str(CPU_CONFIG)]
    command += ["-m", "softprompt", "train", str(config), "--no-progress", *extra]
    return run(command, ACCELERATE_USE_CPU="true")


def text_sections(model_dir: Path, data: dict[str, Path], out: Path, batch_size: int) -> dict:
    return make_config(
        model_dir,
        data,
        out,
        method=prompt_method(num_virtual_tokens=8),
        epochs=1,
        batch_size=batch_size,
        # Adam turns float noise in near-zero gradients into steps of about the
        # learning rate's size; a moderate one keeps that well inside TOLERANCE.
        learning_rate=0.1,
        logging_steps=1,
        save_steps=3,
        save_total_limit=None,
        eval_generate=False,
    )


def tensors(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "adapter_model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    for name in ta:
        torch.testing.assert_close(ta[name], tb[name], **TOLERANCE, msg=name)


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def text_runs(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """The same training (48 examples, 8 per step, 6 steps) in one and in two processes.

    Llama has no dropout, so the two can agree to float rounding.
    """
    root = tmp_path_factory.mktemp("parallel")
    data = {
        "train": write_jsonl(root / "data" / "train.jsonl", toy_task(48, seed=1)),
        "val": write_jsonl(root / "data" / "val.jsonl", toy_task(13, seed=2)),
    }
    model = tiny_models["llama"]

    def config(name: str, out: Path, batch_size: int) -> Path:
        return write_config(root / name, text_sections(model, data, out, batch_size))

    one, two = root / "one", root / "two"
    train(load_config(config("one.yaml", one, batch_size=8)))
    launch_two(config("two.yaml", two, batch_size=4))
    return {"root": root, "one": one, "two": two, "config": config}


def test_two_processes_train_what_one_process_trains(text_runs):
    one, two = text_runs["one"], text_runs["two"]
    for step in (3, 6):
        assert_same_weights(one / f"checkpoint-{step}", two / f"checkpoint-{step}")
    assert_same_weights(one / "best", two / "best")
    # The main process alone writes: one line per event, no half-written directories.
    logged = events(two)
    assert [e["step"] for e in logged if e["event"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [e["event"] for e in logged].count("eval") == 1
    assert not [p.name for p in two.iterdir() if p.name.startswith(".")]
    # Validation covers all 13 examples (split 7 + 6 over the processes), not one share.
    (eval_one,) = [e for e in events(one) if e["event"] == "eval"]
    (eval_two,) = [e for e in logged if e["event"] == "eval"]
    assert eval_two["eval_num_samples"] == 13
    assert eval_two["eval_loss"] == pytest.approx(eval_one["eval_loss"], rel=1e-5)
    train_one = [e["loss"] for e in events(one) if e["event"] == "train"]
    train_two = [e["loss"] for e in logged if e["event"] == "train"]
    assert train_two == pytest.approx(train_one, rel=1e-4)
    # Each process's random state is kept, for an exact resume with dropout.
    assert (two / "checkpoint-6" / "rng_state_1.safetensors").is_file()
    state = json.loads((two / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["samples_in_epoch"] == 24 and state["examples_per_step"] == 8
    results = json.loads((two / "all_results.json").read_text())
    assert results["global_step"] == 6 and results["epoch"] == 1


def test_two_processes_train_the_lora_one_process_trains(text_runs):
    """LoRA weights live inside the backbone; DDP must still average their gradients."""
    root = text_runs["root"]
    one, two = root / "lora_one", root / "lora_two"
    data = {"train": root / "data" / "train.jsonl", "val": root / "data" / "val.jsonl"}
    model = json.loads((text_runs["one"] / "best" / "softprompt.json").read_text())["base_model"]

    def config(name: str, out: Path, batch_size: int) -> Path:
        sections = text_sections(Path(model), data, out, batch_size)
        sections["method"]["lora"] = {"enabled": True, "r": 4, "dropout": 0.0}
        sections["method"]["lora"]["learning_rate"] = 0.01
        return write_config(root / name, sections)

    train(load_config(config("l1.yaml", one, batch_size=8)))
    launch_two(config("l2.yaml", two, batch_size=4))
    for adapter in ("prompt", "lora"):
        assert_same_weights(one / "checkpoint-6" / adapter, two / "checkpoint-6" / adapter)
    moved = tensors(two / "best" / "lora")
    assert any(v.abs().sum() > 0 for k, v in moved.items() if "lora_B" in k)


def test_two_processes_train_the_bank_one_process_trains(text_runs):
    """A multi-task bank: rows of different tasks (prompts of 3 and 5 tokens) in one step,
    split over two processes, give the prompts one process gives."""
    root = text_runs["root"]
    one, two = root / "bank_one", root / "bank_two"
    data = {"train": root / "data" / "train.jsonl", "val": root / "data" / "val.jsonl"}
    model = json.loads((text_runs["one"] / "best" / "softprompt.json").read_text())["base_model"]
    second = write_jsonl(root / "data" / "second.jsonl", toy_task(24, seed=7))

    def config(name: str, out: Path, batch_size: int) -> Path:
        sections = text_sections(Path(model), data, out, batch_size)
        sections["tasks"] = [
            {"name": "first", "num_virtual_tokens": 3},
            {"name": "second", "num_virtual_tokens": 5, "data": {"train_path": str(second)}},
        ]
        return write_config(root / name, sections)

    train(load_config(config("b1.yaml", one, batch_size=8)))
    launch_two(config("b2.yaml", two, batch_size=4))
    for task in ("first", "second"):
        assert_same_weights(one / "checkpoint-9" / task, two / "checkpoint-9" / task)
    (eval_one,) = [e for e in events(one) if e["event"] == "eval"]
    (eval_two,) = [e for e in events(two) if e["event"] == "eval"]
    assert eval_two["eval_second_loss"] == pytest.approx(eval_one["eval_second_loss"], rel=1e-5)


def test_resume_across_process_counts(text_runs):
    root, one, two, config = (text_runs[k] for k in ("root", "one", "two", "config"))
    # Written by two processes, finished by one (8 examples per step either way).
    to_one = root / "two-then-one"
    to_one.mkdir()
    shutil.copytree(two / "checkpoint-3", to_one / "checkpoint-3")
    train(load_config(config("to_one.yaml", to_one, batch_size=8)), resume="auto")
    assert_same_weights(to_one / "checkpoint-6", one / "checkpoint-6")

    # Written by one process, finished by two, through the CLI's own launcher.
    to_two = root / "one-then-two"
    to_two.mkdir()
    shutil.copytree(one / "checkpoint-3", to_two / "checkpoint-3")
    cfg = config("to_two.yaml", to_two, batch_size=4)
    command = [sys.executable, "-m", "softprompt", "train", "--launcher", "accelerate"]
    output = run([*command, "--num-processes", "2", str(cfg), "--resume", "auto", "--no-progress"])
    assert "2 process(es) x batch_size 4" in output
    assert_same_weights(to_two / "checkpoint-6", one / "checkpoint-6")
    steps = [e["step"] for e in events(to_two) if e["event"] == "train"]
    assert steps == [4, 5, 6]


def test_a_signal_to_one_process_stops_all_at_the_same_step(text_runs):
    """SIGTERM reaches the second process only. Leaving alone, it would strand the
    first in its next collective call; instead both stop after the same step, save
    that step together and exit, and the run resumes to the uninterrupted prompt."""
    root, one, config = (text_runs[k] for k in ("root", "one", "config"))
    out, pids, log = root / "stopped", root / "pids", root / "stopped.log"
    pids.mkdir()
    cfg = config("stopped.yaml", out, batch_size=4)
    command = [*ACCELERATE_LAUNCH, "--config_file", str(CPU_CONFIG)]
    command += [str(ROOT / "tests" / "crash_driver.py"), "train", str(cfg), "--no-progress"]
    env = user_env(ACCELERATE_USE_CPU="true", CRASH_STEP_PAUSE="0.5", CRASH_PID_DIR=str(pids))
    with open(log, "wb") as handle:
        launcher = subprocess.Popen(command, env=env, cwd=ROOT, stdout=handle, stderr=handle)
    ended = False
    try:
        deadline = time.monotonic() + 300
        while not ((out / "metrics.jsonl").is_file() and (pids / "rank-1").is_file()):
            assert launcher.poll() is None, log.read_text()[-5000:]
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.05)
        os.kill(int((pids / "rank-1").read_text()), signal.SIGTERM)
        launcher.wait(timeout=120)  # a process waiting for a stopped one never returns
        ended = True
    finally:
        if not ended:  # the launcher detached them: killing it does not end them
            launcher.kill()
            for pid_file in pids.iterdir():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    output = log.read_text()
    saved = re.findall(r"Interrupted: saving checkpoint-(\d+)", output)
    assert len(saved) == 2 and saved[0] == saved[1], output[-5000:]
    step = int(saved[0])
    assert 1 <= step < 6
    latest = find_latest_checkpoint(out)
    assert latest is not None and latest.name == f"checkpoint-{step}"
    assert (latest / "rng_state_1.safetensors").is_file()
    assert output.count("interrupted") == 2  # both processes exited through the CLI's stop
    launch_two(cfg, "--resume", "auto")
    assert [e["step"] for e in events(out) if e["event"] == "train"][-1] == 6
    assert_same_weights(out / "checkpoint-6", one / "checkpoint-6")


def test_vision_projection_is_trained_in_step(tiny_models, tiny_clip, tmp_path):
    """The composed VLM's projection trains beside the prompt: its gradients must be
    averaged too, or the processes' projections drift apart."""
    folders = tmp_path / "images"
    image_folders(folders / "train", per_class=4)
    image_folders(folders / "val", per_class=2)

    def config(name: str, batch_size: int) -> Path:
        sections = make_config(
            tiny_models["llama"],
            {"train": folders / "train", "val": folders / "val"},
            tmp_path / name,
            model_options={"vision_encoder": str(tiny_clip)},
            task={"type": "classify", "instruction": "Which colour?"},
            epochs=2,
            batch_size=batch_size,
            learning_rate=0.3,
            projection_learning_rate=0.05,
            logging_steps=1,
            save_steps=1,
            save_total_limit=None,
            max_grad_norm=None,
        )
        return write_config(tmp_path / f"{name}.yaml", sections)

    train(load_config(config("one", batch_size=4)))
    launch_two(config("two", batch_size=2))
    last_one = find_latest_checkpoint(tmp_path / "one")
    last_two = find_latest_checkpoint(tmp_path / "two")
    assert last_one.name == last_two.name == "checkpoint-4"
    projection = {k: v for k, v in tensors(last_two).items() if k.startswith("projection.")}
    first = tensors(tmp_path / "two" / "checkpoint-1")
    assert projection and any(not torch.equal(v, first[k]) for k, v in projection.items())
    assert_same_weights(last_one, last_two)
    eval_two = [e for e in events(tmp_path / "two") if e["event"] == "eval"][-1]
    assert eval_two["eval_num_samples"] == 4 and "eval_accuracy" in eval_two


# ---------------------------------------------------------------- the pieces, in-process


def test_each_step_is_split_evenly_over_processes_and_passes():
    step = list(range(16))
    parts = [micro_batches(step, p, num_processes=2, accumulation=2) for p in (0, 1)]
    assert parts == [[[0, 1, 2, 3], [8, 9, 10, 11]], [[4, 5, 6, 7], [12, 13, 14, 15]]]
    # A short last step: sizes differ by at most one, nothing lost or repeated, and a
    # process can be left with an empty pass (the loop runs it with weight 0).
    short = list(range(3))
    parts = [micro_batches(short, p, num_processes=2, accumulation=2) for p in (0, 1)]
    flat = sorted(i for part in parts for chunk in part for i in chunk)
    assert flat == short and [] in parts[0] + parts[1]
    assert [len(c) for c in split_step(list(range(7)), 3)] == [2, 2, 3]


def test_position_in_epoch_counts_examples():
    batches = [[0] * 8, [0] * 8, [0] * 5]
    assert [position_in_epoch(batches, n) for n in (0, 8, 16, 21)] == [0, 1, 2, 3]
    assert position_in_epoch(batches, 12) == 2  # another step size: the next whole one


def test_checkpoints_that_counted_batches_still_resume(tiny_models, toy_data, tmp_path):
    out = tmp_path / "run"
    sections = text_sections(tiny_models["gpt2"], toy_data, out, batch_size=8)
    sections["training"].update(save_steps=2, max_steps=2)
    train(load_config(write_config(tmp_path / "c.yaml", sections)))
    path = out / "checkpoint-2"
    state = json.loads((path / "trainer_state.json").read_text())
    del state["samples_in_epoch"], state["examples_per_step"]
    state["batch_in_epoch"] = 2
    (path / "trainer_state.json").write_text(json.dumps(state))
    prompt = torch.nn.Parameter(torch.zeros(8, 32))
    optimizer = torch.optim.AdamW([prompt])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    loaded = load_checkpoint(path, optimizer, scheduler, process_index=1, batch_size=8)
    assert (loaded.samples_in_epoch, loaded.examples_per_step) == (16, 8)


def test_each_process_restores_its_own_random_state(tmp_path):
    prompt = torch.nn.Parameter(torch.zeros(2, 4))
    optimizer = torch.optim.AdamW([prompt])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    states, draws = [], []
    for seed in (1, 2):  # what two processes would hold
        torch.manual_seed(seed)
        states.append(rng_state())
        draws.append(torch.rand(3))

    def write_prompt(directory: Path) -> None:
        save_prompt(
            directory, prompt.detach(), family="causal_lm", base_model="tiny", fingerprint_info={}
        )

    path = save_checkpoint(
        tmp_path, TrainState(global_step=1), write_prompt, optimizer, scheduler, states
    )
    assert {"rng_state.json", "rng_state_1.json", "optimizer.safetensors"} <= {
        f.name for f in path.iterdir()
    }
    # Process 2 of a larger run has no state of its own here: it takes process 0's.
    for process, expected in ((1, draws[1]), (0, draws[0]), (2, draws[0])):
        load_checkpoint(path, optimizer, scheduler, process_index=process)
        assert torch.equal(torch.rand(3), expected), process


def test_sharded_evaluation_equals_the_whole(tiny_models, toy_data):
    backbone = load_backbone(str(tiny_models["gpt2"]))
    examples = load_text_examples(str(toy_data["val"]))
    prompt = backbone.word_embeddings()[:4].detach()
    settings = EncodeSettings()

    def score(shard):
        return evaluate(
            backbone,
            fixed_prompt(prompt),
            examples,
            TextTask(max_new_tokens=2),
            settings,
            batch_size=4,
            shard=shard,
        )

    whole, whole_preds = score(WHOLE_SET)
    # Process 1's part, then process 0 joining it as gather_object would.
    other: list = []
    score(EvalShard(1, 2, gather=lambda part: other.extend(part) or part))
    joined, joined_preds = score(EvalShard(0, 2, gather=lambda part: part + other))
    assert joined_preds == whole_preds
    assert joined["loss"] == pytest.approx(whole["loss"], rel=1e-6)
    assert joined["num_samples"] == whole["num_samples"] == len(examples)


def test_launcher_command_and_flags(tmp_path, capsys):
    command = accelerate_launch_command(["train", "c.yaml"], num_processes=4)
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    assert "--multi_gpu" in command and command[-5:] == ["4", "-m", "softprompt", "train", "c.yaml"]
    with_config = accelerate_launch_command(["train", "c.yaml"], config_file="ddp.yaml")
    assert "--multi_gpu" not in with_config and "ddp.yaml" in with_config
    assert main(["train", "c.yaml", "--num-processes", "2"]) == 2
    assert "--launcher accelerate" in capsys.readouterr().err


def test_accelerate_configs_start_with_their_command():
    configs = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))
    assert {p.name for p in configs} >= {"ddp.yaml", "cpu_2proc.yaml"}
    for path in configs:
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert "accelerate launch --config_file configs/accelerate/" + path.name in first
        assert first.startswith("# ") and "-m softprompt train" in first
        load_config_from_file(str(path))  # accelerate's own reader accepts it
