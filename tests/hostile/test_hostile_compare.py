"""Hostile `softprompt compare` (and `sweep`) use: Ctrl-C and duplicated methods.

Covered: Ctrl-C in the terminal (SIGINT to the whole process group) while a method
trains: the child saves a checkpoint, the parent prints "interrupted; rerun to resume"
and exits 130 without a traceback, and the next method never starts; SIGINT or SIGTERM
to the training child alone, the same (128 + the signal); the same for a `sweep` cell;
`--methods` naming a method twice, also through another spelling (`lora+prompt`, upper
case, spaces).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import toy_run_config

from softprompt.commands.cli import main
from softprompt.config.run import ConfigError
from softprompt.train.checkpoint import find_latest_checkpoint
from softprompt.workflows.compare import parse_methods

TESTS = Path(__file__).resolve().parents[1]
SRC = TESTS.parent / "src"
WAIT_LIMIT = 120.0  # seconds; generous, the machine is shared
NVT = "method.prompt_tuning.num_virtual_tokens"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "methods",
    ["prompt,prompt", "prompt+lora,lora+prompt", "prompt, PROMPT ", "lora,prompt,lora"],
)
def test_a_method_named_twice_is_refused(tiny_models, tmp_path, capsys, methods):
    config = toy_run_config(tmp_path, tiny_models["gpt2"], max_steps=2)
    capsys.readouterr()  # building the tiny model on first use writes a progress bar
    out = tmp_path / "compare"
    assert main(["compare", str(config), "--methods", methods, "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "more than once" in err and "--methods" in err, err
    assert not out.exists()


def test_other_spellings_of_a_method_are_that_method():
    assert parse_methods(" Prompt ,lora+PROMPT, full") == ["prompt", "prompt+lora", "full"]
    with pytest.raises(ConfigError, match="unknown prompt\\+bogus"):
        parse_methods("prompt+bogus")


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def start_workflow(command: str, config: Path, out: Path, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    argv = [sys.executable, "-m", "softprompt", command, str(config), "--output-dir", str(out)]
    argv += ["--methods", "prompt,lora"] if command == "compare" else ["--grid", f"{NVT}=2,3"]
    with open(log, "wb") as handle:
        # Its own process group: a signal to the group is what Ctrl-C in a terminal sends.
        return subprocess.Popen(
            argv, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def wait_for_training(process: subprocess.Popen, run: Path, log: Path) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while not (run / "metrics.jsonl").is_file():
        if process.poll() is not None:
            pytest.fail(f"the workflow ended before training:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"training never started:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)


# (command, the folder its first run trains in, the one it would train next)
FOLDERS = {
    "compare": ("prompt", "lora"),
    "sweep": ("num_virtual_tokens=2", "num_virtual_tokens=3"),
}


@pytest.mark.parametrize(
    ("command", "target", "signum"),
    [
        ("compare", "group", signal.SIGINT),
        ("compare", "child", signal.SIGINT),
        ("compare", "child", signal.SIGTERM),
        ("sweep", "group", signal.SIGINT),
        ("sweep", "child", signal.SIGINT),
    ],
    ids=["ctrl-c", "sigint-to-child", "sigterm-to-child", "sweep-ctrl-c", "sweep-sigint-to-child"],
)
def test_an_interrupted_workflow_exits_cleanly(tiny_models, tmp_path, command, target, signum):
    # Long enough never to finish before the signal; no checkpoint before it.
    config = toy_run_config(
        tmp_path, tiny_models["gpt2"], max_steps=5000, save_steps=100000, eval_steps=100000
    )
    out, log = tmp_path / command, tmp_path / f"{command}.log"
    first, second = (out / name for name in FOLDERS[command])
    process = start_workflow(command, config, out, log)
    try:
        wait_for_training(process, first, log)
        if target == "group":
            os.killpg(process.pid, signum)
        else:
            (child,) = children_of(process.pid)
            os.kill(child, signum)
        process.wait(timeout=WAIT_LIMIT)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    output = log.read_text()
    assert process.returncode == 128 + signum, output[-3000:]
    assert "interrupted; rerun to resume" in output.splitlines()[-1], output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    # The run stopped at a step boundary and saved it; the next one never started.
    assert find_latest_checkpoint(first) is not None
    assert not second.exists() and not (out / f"{command}.json").exists()
