"""Every command, handed a config or artifact that is missing, the wrong kind of file, empty,
binary or damaged, stops with exit code 2 and one `error:` line naming it: no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from softprompt.commands.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

# name -> how to make it under a folder (None: leave it missing).
HOSTILE = {
    "missing": None,
    "a folder": lambda p: p.mkdir(),
    "empty": lambda p: p.write_bytes(b""),
    "binary": lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n\0\0\xff\xfe" * 8),
    "a yaml list": lambda p: p.write_text("- 1\n- 2\n"),
    "torn yaml": lambda p: p.write_text("model:\n  name: [unclosed\n"),
    "unknown key": lambda p: p.write_text("modle: {name: x}\n"),
}

CONFIG_COMMANDS = {
    "train": lambda c: ["train", c, "--no-progress"],
    "eval": lambda c: ["eval", c, "--no-progress"],
    "baseline": lambda c: ["baseline", c, "--no-progress"],
    "compare": lambda c, o="": ["compare", c, "--methods", "prompt,lora", "--output-dir", o],
    "sweep": lambda c, o="": [
        "sweep",
        c,
        "--grid",
        "training.learning_rate=0.1,0.2",
        "--output-dir",
        o,
    ],  # fmt: skip
}

ARTIFACT_COMMANDS = {
    "predict": lambda a: ["predict", "--prompt", a, "--text", "hi", "--no-progress"],
    "export": lambda a, o="": ["export", a, "--merge", "--output", o],
    "report": lambda a: ["report", a, "--no-progress"],
    "inspect": lambda a: ["inspect", a],
    "demo-ui": lambda a: ["demo-ui", "--prompt", a],
    "eval --prompt": None,  # covered by the config cases: the config is read first
}


def one_error_line(code: int, err: str, named: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert named in lines[0], lines[0]
    return lines[0]


def hostile_path(tmp_path: Path, kind: str, name: str) -> Path:
    path = tmp_path / name
    make = HOSTILE[kind]
    if make is not None:
        make(path)
    return path


def argv_for(build, path: Path, tmp_path: Path) -> list[str]:
    try:
        return build(str(path), str(tmp_path / "out"))
    except TypeError:
        return build(str(path))


@pytest.mark.parametrize("kind", sorted(HOSTILE))
@pytest.mark.parametrize("command", sorted(CONFIG_COMMANDS))
def test_a_hostile_config_is_one_line(command, kind, tmp_path, capsys):
    config = hostile_path(tmp_path, kind, "config.yaml")
    code = main(argv_for(CONFIG_COMMANDS[command], config, tmp_path))
    named = "modle" if kind == "unknown key" else "config.yaml"
    one_error_line(code, capsys.readouterr().err, named)


@pytest.mark.parametrize("kind", sorted(k for k in HOSTILE if k != "unknown key"))
@pytest.mark.parametrize("command", sorted(c for c, b in ARTIFACT_COMMANDS.items() if b))
def test_a_hostile_artifact_is_one_line(command, kind, tmp_path, capsys):
    artifact = hostile_path(tmp_path, kind, "bundle")
    code = main(argv_for(ARTIFACT_COMMANDS[command], artifact, tmp_path))
    one_error_line(code, capsys.readouterr().err, "bundle")


@pytest.mark.parametrize("kind", ["missing", "empty", "binary"])
def test_serve_with_no_prompts_folder_is_one_line(kind, tmp_path, capsys):
    prompts = hostile_path(tmp_path, kind, "prompts")
    code = main(["serve", "--prompts-dir", str(prompts), "--model", str(tmp_path / "none")])
    one_error_line(code, capsys.readouterr().err, "prompts")


def test_train_without_training_data_stops_before_the_model_loads(tmp_path, capsys, monkeypatch):
    from softprompt.train import setup as setup_module

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(setup_module, "_setup_model", no_load)
    config = tmp_path / "config.yaml"
    config.write_text(f"training: {{output_dir: {tmp_path / 'run'}}}\n")
    code = main(["train", str(config), "--no-progress"])
    one_error_line(code, capsys.readouterr().err, "data.train_path")
