"""A full disk: every write of a run directory (checkpoints, `best/`, `metrics.jsonl`,
`all_results.json`, the report) that finds no room stops with one line naming the
directory and the free space needed, removes its temporaries, and leaves what was there
before complete: the last checkpoint still loads and the run resumes once there is room.

Covered: ENOSPC, EDQUOT and EROFS as `OSError`, and safetensors' own error for ENOSPC,
injected into each writer (runs everywhere); a real full disk on a 2 MB tmpfs (as root,
where `mount` works; skipped otherwise, with the reason) during a checkpoint and a report.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
from disk_space import fill
from helpers import make_config, toy_task, write_config, write_jsonl
from safetensors import SafetensorError

from softprompt.artifacts.manifest import DiskFullError, disk_full_error
from softprompt.commands.cli import main
from softprompt.train import checkpoint as checkpoint_module
from softprompt.train import run_files
from softprompt.train.checkpoint import find_latest_checkpoint, validate_checkpoint
from softprompt.train.run_files import MetricsLog, replace_dir_atomically, write_json_atomically
from softprompt.train.setup import Run

pytestmark = pytest.mark.usefixtures("one_thread")

SHORT = {"batch_size": 8, "save_steps": 2, "eval_generate": False}


def os_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


FAILURES = {
    "ENOSPC": lambda: os_error(errno.ENOSPC),
    "EDQUOT": lambda: os_error(errno.EDQUOT),
    "EROFS": lambda: os_error(errno.EROFS),
    "safetensors": lambda: SafetensorError(
        "Error while serializing: I/O error: No space left on device (os error 28)"
    ),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("disk_data")
    return {
        "train": write_jsonl(root / "train.jsonl", toy_task(16, seed=1)),
        "val": write_jsonl(root / "val.jsonl", toy_task(4, seed=2)),
    }


def config_file(directory: Path, model, data, run: Path, steps: int) -> Path:
    raw = make_config(model, data, run, task={"max_new_tokens": 2}, training=SHORT,
                      max_steps=steps)  # fmt: skip
    return write_config(directory / f"config-{steps}.yaml", raw)


@pytest.fixture(scope="module")
def trained(tiny_models, data, tmp_path_factory) -> Path:
    """A finished 2-step GPT-2 prompt run (checkpoint-2, best/, all_results.json)."""
    root = tmp_path_factory.mktemp("disk_run")
    assert main(["train", str(config_file(root, tiny_models["gpt2"], data, root / "run", 2)),
                 "--no-progress"]) == 0  # fmt: skip
    return root / "run"


def copy_run(trained: Path, where: Path) -> Path:
    shutil.copytree(trained, where / "run")
    return where / "run"


def error_line(code: int, err: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def no_temporaries(directory: Path) -> None:
    left = [p.name for p in directory.rglob(".tmp-*")]
    assert not left, left


def assert_resumes_from_step_2(run: Path) -> None:
    latest = find_latest_checkpoint(run)
    assert latest == run / "checkpoint-2"
    assert validate_checkpoint(latest)["global_step"] == 2


def failing_checkpoint_writes(monkeypatch, make_error, before=None) -> None:
    """checkpoint-4's optimizer state write fails (half written) with `make_error()`."""
    real = checkpoint_module.save_state

    def save_state(state, path):
        if "checkpoint-4" in str(path):
            if before is not None:
                before()
            Path(path).write_bytes(b"\0" * 100)
            raise make_error()
        real(state, path)

    monkeypatch.setattr(checkpoint_module, "save_state", save_state)


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_a_full_disk_during_a_checkpoint_is_one_line_and_loses_nothing(
    trained, tiny_models, data, tmp_path, capsys, monkeypatch, failure
):
    run = copy_run(trained, tmp_path)
    config = config_file(tmp_path, tiny_models["gpt2"], data, run, 4)
    failing_checkpoint_writes(monkeypatch, FAILURES[failure])
    capsys.readouterr()
    line = error_line(main(["train", str(config), "--no-progress", "--resume", "auto"]),
                      capsys.readouterr().err)  # fmt: skip
    assert "checkpoint-4" in line and str(run) in line, line
    assert ("read-only" in line) if failure == "EROFS" else ("needs about" in line), line
    assert "--resume auto" in line
    no_temporaries(run)
    assert_resumes_from_step_2(run)
    monkeypatch.undo()  # room again: the run continues from checkpoint-2
    assert main(["train", str(config), "--no-progress", "--resume", "auto"]) == 0
    assert validate_checkpoint(run / "checkpoint-4")["global_step"] == 4


def test_a_full_disk_while_writing_best_is_one_line(
    tiny_models, data, tmp_path, capsys, monkeypatch
):
    real = Run.save_adapters

    def save_adapters(self, directory):
        real(self, directory)
        if directory.name.startswith(".tmp-best"):
            raise os_error(errno.ENOSPC)

    monkeypatch.setattr(Run, "save_adapters", save_adapters)
    run = tmp_path / "run"
    config = config_file(tmp_path, tiny_models["gpt2"], data, run, 2)
    capsys.readouterr()
    line = error_line(main(["train", str(config), "--no-progress"]), capsys.readouterr().err)
    assert "best/" in line and str(run) in line, line
    no_temporaries(run)


def test_replacing_a_dir_on_a_full_disk_keeps_the_old_one(tmp_path):
    target = tmp_path / "best"
    target.mkdir()
    (target / "adapter_model.safetensors").write_bytes(b"old" * 1000)

    def write(directory: Path) -> None:
        directory.mkdir()
        (directory / "adapter_model.safetensors").write_bytes(b"new")
        raise os_error(errno.ENOSPC)

    with pytest.raises(DiskFullError, match=r"best/ in .*needs about 3\.0 kB"):
        replace_dir_atomically(target, write)
    assert (target / "adapter_model.safetensors").read_bytes() == b"old" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_a_full_disk_while_logging_leaves_the_log_whole(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, enabled=True)
    log.write({"event": "train", "step": 1})
    before = path.read_bytes()

    def torn_open(file, mode="r", *args, **kwargs):
        handle = open(file, mode, *args, **kwargs)
        if "a" not in mode:
            return handle
        handle.write(b'{"event": "tr')
        handle.flush()
        handle.close()
        raise os_error(errno.ENOSPC)

    monkeypatch.setattr(run_files, "open", torn_open, raising=False)
    with pytest.raises(DiskFullError, match="metrics.jsonl in"):
        log.write({"event": "train", "step": 2})
    assert path.read_bytes() == before


def torn_write_bytes(monkeypatch, inside: Path) -> None:
    """Path.write_bytes under `inside` writes half its data, then finds the disk full."""
    real = Path.write_bytes

    def write_bytes(self, data):
        if inside in self.parents:
            real(self, data[: len(data) // 2])
            raise os_error(errno.ENOSPC)
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def test_a_full_disk_while_writing_results_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "all_results.json"
    write_json_atomically(path, {"old": True})
    torn_write_bytes(monkeypatch, tmp_path)
    with pytest.raises(DiskFullError, match="all_results.json"):
        write_json_atomically(path, {"new": list(range(100))})
    assert json.loads(path.read_text()) == {"old": True}
    no_temporaries(tmp_path)


def test_a_full_disk_while_writing_a_report_is_one_line(trained, tmp_path, capsys, monkeypatch):
    run = copy_run(trained, tmp_path)
    torn_write_bytes(monkeypatch, run / "report")
    capsys.readouterr()
    line = error_line(main(["report", str(run), "--no-progress"]), capsys.readouterr().err)
    assert str(run / "report") in line and "no space left on device" in line, line
    no_temporaries(run / "report")


def test_the_message_names_the_space_needed(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    message = str(disk_full_error(tmp_path, "checkpoint-8", 3 * 10**6, errno.ENOSPC, "go on"))
    assert str(tmp_path) in message and "checkpoint-8" in message
    assert "needs about 3.0 MB free, 1.0 MB is free there: free at least 2.0 MB" in message
    assert message.endswith("then go on") and "\n" not in message


# ------------------------------------------------------------------ a real full disk


def test_a_real_full_disk_during_a_checkpoint(
    trained, tiny_models, data, tmpfs, tmp_path, capsys, monkeypatch
):
    run = copy_run(trained, tmpfs)
    config = config_file(tmp_path, tiny_models["gpt2"], data, run, 4)
    real = checkpoint_module.save_state
    filled = []

    def save_state(state, path):
        if "checkpoint-4" in str(path) and not filled:
            filled.append(fill(tmpfs))  # the disk fills up while the checkpoint is written
        real(state, path)

    monkeypatch.setattr(checkpoint_module, "save_state", save_state)
    capsys.readouterr()
    line = error_line(main(["train", str(config), "--no-progress", "--resume", "auto"]),
                      capsys.readouterr().err)  # fmt: skip
    assert "checkpoint-4" in line and str(run) in line and "needs about" in line, line
    no_temporaries(run)
    assert_resumes_from_step_2(run)
    filled[0].unlink()
    assert main(["train", str(config), "--no-progress", "--resume", "auto"]) == 0
    assert validate_checkpoint(run / "checkpoint-4")["global_step"] == 4


def test_a_real_full_disk_during_a_report(trained, tmpfs, capsys):
    run = copy_run(trained, tmpfs)
    (run / "report").mkdir()
    fill(tmpfs)
    capsys.readouterr()
    line = error_line(main(["report", str(run), "--no-progress"]), capsys.readouterr().err)
    assert str(run / "report") in line and "no space left on device" in line, line
    no_temporaries(run)


def test_a_real_full_disk_under_predict(trained, tmpfs, capsys):
    """Predictions are written whole or not at all; the line names the file."""
    fill(tmpfs)
    capsys.readouterr()
    argv = ["predict", "--prompt", str(trained / "best"), "--text", "red cat"]
    line = error_line(main([*argv, "--output", str(tmpfs / "out.jsonl"), "--no-progress"]),
                      capsys.readouterr().err)  # fmt: skip
    assert f"out.jsonl in {tmpfs}" in line and "needs about" in line, line
    no_temporaries(tmpfs)


def test_a_full_disk_in_an_unguarded_write_is_one_line(tiny_models, data, tmp_path, capsys,
                                                      monkeypatch):  # fmt: skip
    """A write no site guards (the run's config.yaml) ends in the CLI's one line too."""
    from softprompt.train import setup as setup_module

    def no_room(config, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(setup_module, "save_config", no_room)
    run = tmp_path / "run"
    capsys.readouterr()
    config = config_file(tmp_path, tiny_models["gpt2"], data, run, 2)
    line = error_line(main(["train", str(config), "--no-progress"]), capsys.readouterr().err)
    assert f"config.yaml in {run}" in line and "no space left on device" in line, line
