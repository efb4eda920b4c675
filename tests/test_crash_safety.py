"""Crash safety: `softprompt train` killed (SIGKILL) or interrupted (SIGINT) at chosen
moments resumes from its last complete checkpoint and ends with the prompt an
uninterrupted run ends with, bit for bit."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import make_config, toy_task, write_config, write_jsonl

from softprompt.commands.cli import main
from softprompt.config.run import load_config
from softprompt.train.checkpoint import find_latest_checkpoint, validate_checkpoint
from softprompt.train.interrupt import DeferredInterrupt, StopRequested
from softprompt.train.loop import train

TESTS = Path(__file__).resolve().parent
DRIVER = TESTS / "crash_driver.py"
SRC = TESTS.parent / "src"
FINAL_STEP = 18  # 48 examples / batch 8 = 6 steps per epoch, 3 epochs
WAIT_LIMIT = 120.0  # seconds; generous, the machine is shared


# Tiny models on a shared 2-core machine run fastest on one thread (see conftest).
pytestmark = pytest.mark.usefixtures("one_thread")


def crash_config(directory: Path, model: Path, data: dict[str, Path]) -> Path:
    # GPT-2 has dropout: the RNG state matters.
    raw = make_config(
        model,
        data,
        directory / "run",
        task={"max_new_tokens": 2},
        epochs=3,
        batch_size=8,
        learning_rate=0.3,
        logging_steps=1,
        save_steps=4,
        save_total_limit=2,
        eval_generate=False,
    )
    return write_config(directory / "config.yaml", raw)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash_data")
    return {
        "train": write_jsonl(root / "train.jsonl", toy_task(48, seed=1)),
        "val": write_jsonl(root / "val.jsonl", toy_task(8, seed=2)),
    }


@pytest.fixture(scope="module")
def reference(tiny_models, data, tmp_path_factory):
    """The uninterrupted run: its final checkpoint and best/ prompt bytes."""
    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("reference")
    train(load_config(crash_config(directory, tiny_models["gpt2"], data)))
    run = directory / "run"
    return {
        "final": (run / f"checkpoint-{FINAL_STEP}" / "adapter_model.safetensors").read_bytes(),
        "best": (run / "best" / "adapter_model.safetensors").read_bytes(),
    }


def start(config: Path, log: Path, step_pause: float, write_pause: float) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "CRASH_STEP_PAUSE": str(step_pause),
        "CRASH_WRITE_PAUSE": str(write_pause),
        "OMP_NUM_THREADS": "1",
    }
    with open(log, "wb") as handle:
        return subprocess.Popen(
            [sys.executable, str(DRIVER), "train", str(config), "--no-progress"],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
        )


def wait_until(process: subprocess.Popen, condition, log: Path) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"training ended before the kill moment:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"kill moment never came:\n{log.read_text()[-3000:]}")
        time.sleep(0.002)


def tmp_dirs(run: Path, step: int) -> list[Path]:
    return list(run.glob(f".tmp-checkpoint-{step}-*")) if run.is_dir() else []


def training_started(run: Path):
    return lambda: (run / "metrics.jsonl").is_file()


def writing(run: Path, step: int):
    """A checkpoint's temporary directory exists but trainer_state.json is not in it yet."""
    return lambda: any(
        (d / "optimizer.safetensors").exists() and not (d / "trainer_state.json").exists()
        for d in tmp_dirs(run, step)
    )


def written_not_renamed(run: Path, step: int):
    return lambda: any((d / "trainer_state.json").exists() for d in tmp_dirs(run, step))


def saved(run: Path, step: int):
    return lambda: (run / f"checkpoint-{step}").is_dir()


# (name, kill moment, extra delay after it, step pause, write pause, newest complete step)
MOMENTS = [
    ("before-any-checkpoint", training_started, 0.0, 0.1, 0.0, None),
    ("mid-checkpoint-write", lambda run: writing(run, 8), 0.0, 0.0, 0.5, 4),
    ("written-not-renamed", lambda run: written_not_renamed(run, 8), 0.0, 0.0, 0.5, 4),
    ("between-checkpoints", lambda run: saved(run, 8), 0.15, 0.05, 0.0, 8),
    # Random moments after training starts, from a fixed seed so a failure can be replayed.
    *[
        (f"random-{i}", training_started, delay, 0.04, 0.05, "any")
        for i, delay in enumerate(random.Random(4).uniform(0.1, 1.2) for _ in range(2))
    ],
]


@pytest.mark.parametrize(
    "moment,delay,step_pause,write_pause,expected",
    [m[1:] for m in MOMENTS],
    ids=[m[0] for m in MOMENTS],
)
def test_sigkill_resumes_to_the_uninterrupted_result(
    tiny_models, data, reference, tmp_path, moment, delay, step_pause, write_pause, expected
):
    config = crash_config(tmp_path, tiny_models["gpt2"], data)
    run = tmp_path / "run"
    log = tmp_path / "train.log"
    process = start(config, log, step_pause, write_pause)
    wait_until(process, moment(run), log)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, log.read_text()[-2000:]

    # Every directory that looks like a checkpoint is a complete one.
    for path in run.glob("checkpoint-*"):
        validate_checkpoint(path)
    latest = find_latest_checkpoint(run)
    if expected != "any":
        assert (latest.name if latest else None) == (
            f"checkpoint-{expected}" if expected else None
        ), sorted(p.name for p in run.iterdir())

    assert main(["train", str(config), "--resume", "auto", "--no-progress"]) == 0
    final = run / f"checkpoint-{FINAL_STEP}"
    validate_checkpoint(final)
    assert (final / "adapter_model.safetensors").read_bytes() == reference["final"]
    assert (run / "best" / "adapter_model.safetensors").read_bytes() == reference["best"]
    assert not list(run.glob(".tmp-*")), "leftovers of the killed writer remain"
    # The log is whole JSON lines, one record per logged step (replayed steps not twice).
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["event"] == "train"]
    assert train_steps == sorted(set(train_steps)), train_steps


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tiny_models, data, reference, tmp_path):
    config = crash_config(tmp_path, tiny_models["gpt2"], data)
    run = tmp_path / "run"
    log = tmp_path / "train.log"
    process = start(config, log, step_pause=0.1, write_pause=0.0)
    wait_until(process, saved(run, 4), log)
    time.sleep(0.15)  # a step or two past checkpoint-4
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    output = log.read_text()
    assert process.returncode == 130, output[-2000:]
    assert "Traceback" not in output and "Interrupted: saving checkpoint-" in output
    latest = find_latest_checkpoint(run)
    step = validate_checkpoint(latest)["global_step"]
    assert 4 < step < FINAL_STEP and latest.name == f"checkpoint-{step}"

    assert main(["train", str(config), "--resume", "auto", "--no-progress"]) == 0
    final = run / f"checkpoint-{FINAL_STEP}" / "adapter_model.safetensors"
    assert final.read_bytes() == reference["final"]


def test_sigterm_and_ctrl_c_wait_for_the_step_boundary():
    interrupt = DeferredInterrupt().install()
    try:
        interrupt.raise_if_requested()  # nothing asked yet
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs between bytecodes; nothing raised mid-step
        with pytest.raises(StopRequested) as stop:
            interrupt.raise_if_requested()
        assert stop.value.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):  # a second signal stops at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    finally:
        interrupt.uninstall()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_processes_agree_on_a_stop():
    """With several processes every one stops when any was signalled (the loop's `agree`
    is an all-reduce of the largest signal number; here a stand-in for it)."""
    interrupt = DeferredInterrupt().install()
    try:
        asked: list[int] = []

        def nobody_else(signum: int) -> int:
            asked.append(signum)
            return signum

        interrupt.raise_if_requested(nobody_else)  # no process was signalled
        with pytest.raises(StopRequested) as stop:  # another process got SIGTERM
            interrupt.raise_if_requested(lambda signum: max(signum, signal.SIGTERM))
        assert stop.value.signum == signal.SIGTERM and asked == [0]
        with pytest.raises(KeyboardInterrupt):  # stopping already: a signal now is a second
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    finally:
        interrupt.uninstall()


def test_damaged_checkpoints_through_the_cli(tiny_models, data, tmp_path, capsys, caplog):
    config = crash_config(tmp_path, tiny_models["gpt2"], data)
    short = ["training.max_steps=4", "training.save_steps=2", "--no-progress"]
    assert main(["train", str(config), *short]) == 0
    run = tmp_path / "run"
    (run / "checkpoint-4" / "rng_state.json").write_text("{}")  # damaged after saving
    capsys.readouterr()
    assert main(["train", str(config), *short, "--resume", str(run / "checkpoint-4")]) == 2
    err = capsys.readouterr().err
    assert "does not match its checksum" in err and "Traceback" not in err
    assert main(["train", str(config), *short, "--resume", "auto"]) == 0
    assert "Skipping checkpoint-4" in caplog.text and "Resumed from" in caplog.text
    assert validate_checkpoint(run / "checkpoint-4")["global_step"] == 4  # written afresh
