"""Concurrent runs into one directory: the second stops at once, naming the first's PID.

Covered: a second `softprompt train` into a running run's `training.output_dir` (fresh,
and with `--resume auto`), the lock gone with a SIGKILLed holder (the resume then trains
each step once), a lock file left by a dead process, an output_dir that is a file; a
`sweep` cell and a `compare` method whose folder another process holds, and a second
`sweep` or `compare` into a busy `--output-dir`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import toy_run_config

from softprompt.commands.cli import main
from softprompt.errors import UserError
from softprompt.train.run_lock import LOCK_FILE, RunDirInUse, RunLock

TESTS = Path(__file__).resolve().parents[1]
DRIVER = TESTS / "crash_driver.py"
SRC = TESTS.parent / "src"
WAIT_LIMIT = 120.0  # seconds; generous, the machine is shared
REFUSAL_LIMIT = 30.0  # a refused run stops before it loads a model
NVT = "method.prompt_tuning.num_virtual_tokens"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _one_thread_children(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def child_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def wait_for(condition, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the first process ended early:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"the first process never started training:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)


def start_slow_train(config: Path, log: Path) -> subprocess.Popen:
    """`softprompt train CONFIG` pausing 0.5 s before each of its 18 steps."""
    with open(log, "wb") as handle:
        return subprocess.Popen(
            [sys.executable, str(DRIVER), "train", str(config), "--no-progress"],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=child_env(CRASH_STEP_PAUSE="0.5"),
        )


def hold_lock(directory: Path, tmp_path: Path) -> subprocess.Popen:
    """A child process holding `directory`'s lock until it is killed."""
    ready = tmp_path / f"held-{directory.name}"
    code = (
        "import sys, time, pathlib\n"
        "from softprompt.train.run_lock import RunLock\n"
        "RunLock(sys.argv[1]).acquire()\n"
        "pathlib.Path(sys.argv[2]).write_text('held')\n"
        "time.sleep(600)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(directory), str(ready)], env=child_env()
    )
    deadline = time.monotonic() + WAIT_LIMIT
    while not ready.exists():
        assert process.poll() is None, "the lock holder ended early"
        assert time.monotonic() < deadline, "the lock holder never took the lock"
        time.sleep(0.02)
    return process


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)


@pytest.mark.parametrize("resume", [[], ["--resume", "auto"]], ids=["fresh", "resume-auto"])
def test_a_second_train_into_a_running_run_stops_at_once(tiny_models, tmp_path, capsys, resume):
    config = toy_run_config(tmp_path, tiny_models["gpt2"], epochs=3, save_steps=4)
    run, log = tmp_path / "run", tmp_path / "first.log"
    first = start_slow_train(config, log)
    try:
        wait_for(lambda: (run / "metrics.jsonl").is_file(), first, log)
        capsys.readouterr()  # what building the fixtures printed
        started = time.monotonic()
        assert main(["train", str(config), "--no-progress", *resume]) == 2
        assert time.monotonic() - started < REFUSAL_LIMIT
        err = capsys.readouterr().err
        assert f"PID {first.pid}" in err and "training.output_dir" in err, err
        assert len(err.strip().splitlines()) == 1, err
        assert first.poll() is None  # the first run goes on undisturbed
        if not resume:
            return
        # The lock goes with its process: a SIGKILLed run leaves none behind.
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        assert main(["train", str(config), "--no-progress", *resume]) == 0
    finally:
        stop(first)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["event"] == "train"]
    assert train_steps == list(range(1, 19))  # each step once: one writer at a time
    assert not (run / LOCK_FILE).exists()  # given back at the end of the run


def test_a_lock_file_of_a_dead_process_is_no_lock(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text("999999999\n")  # what a killed holder leaves
    with RunLock(run) as lock:
        assert lock.held and (run / LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(RunDirInUse, match=f"PID {os.getpid()}"):
            RunLock(run).acquire()  # a second holder, even in the same process
    assert not (run / LOCK_FILE).exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is a file, not a directory"):
        RunLock(tmp_path / "file").acquire()


def sweep_config(tmp_path: Path, model: Path) -> Path:
    return toy_run_config(tmp_path, model, max_steps=2)


def test_a_sweep_cell_another_process_holds_fails_alone(tiny_models, tmp_path, capsys):
    config = sweep_config(tmp_path, tiny_models["gpt2"])
    out = tmp_path / "sweep"
    holder = hold_lock(out / "num_virtual_tokens=2", tmp_path)
    try:
        argv = ["sweep", str(config), "--grid", f"{NVT}=2,3", "--output-dir", str(out)]
        assert main(argv) == 1
    finally:
        stop(holder)
    assert "1 cell(s) failed: num_virtual_tokens=2" in capsys.readouterr().err
    record = json.loads((out / "sweep.json").read_text())
    assert [row["cell"] for row in record["rows"]] == ["num_virtual_tokens=3"]
    (failure,) = record["failures"]
    assert any(f"PID {holder.pid}" in line for line in failure["log_tail"]), failure
    assert not (out / "num_virtual_tokens=2" / "metrics.jsonl").exists()


@pytest.mark.parametrize("command", ["sweep", "compare"])
def test_a_second_workflow_into_a_busy_output_dir_stops_at_once(
    tiny_models, tmp_path, capsys, command
):
    config = sweep_config(tmp_path, tiny_models["gpt2"])
    out = tmp_path / command
    extra = ["--grid", f"{NVT}=2,3"] if command == "sweep" else ["--methods", "prompt"]
    holder = hold_lock(out, tmp_path)
    try:
        started = time.monotonic()
        assert main([command, str(config), *extra, "--output-dir", str(out)]) == 2
        assert time.monotonic() - started < REFUSAL_LIMIT
    finally:
        stop(holder)
    err = capsys.readouterr().err
    assert f"PID {holder.pid}" in err and "--output-dir" in err, err
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]  # nothing trained or written


def test_a_compare_method_another_process_holds_is_one_line(tiny_models, tmp_path, capfd):
    config = sweep_config(tmp_path, tiny_models["gpt2"])
    out = tmp_path / "compare"
    holder = hold_lock(out / "prompt", tmp_path)
    try:
        assert main(["compare", str(config), "--methods", "prompt", "--output-dir", str(out)]) == 2
    finally:
        stop(holder)
    err = capfd.readouterr().err
    assert f"PID {holder.pid}" in err and "Traceback" not in err, err
    assert "method 'prompt'" in err.strip().splitlines()[-1]
    assert not (out / "prompt" / "metrics.jsonl").exists()
