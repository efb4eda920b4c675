"""`softprompt export --merge --output DIR`: DIR is new, empty, or replaced whole with
`--overwrite`; nothing of what was there before stays beside the new model, and a failed
export leaves DIR as it was."""

from __future__ import annotations

import errno

import pytest
import transformers
from disk_space import fill
from helpers import make_config, toy_task, write_config, write_jsonl
from transformers import AutoModelForCausalLM

from softprompt.commands.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lora_bundle(tiny_models, tmp_path_factory):
    """RUN/best of a LoRA run of two steps."""
    root = tmp_path_factory.mktemp("export")
    out = root / "run"
    data = {"train": write_jsonl(root / "train.jsonl", toy_task(16, seed=1))}
    raw = make_config(
        tiny_models["llama"],
        data,
        out,
        method={"prompt_tuning": {"enabled": False}, "lora": {"enabled": True, "r": 4}},
        task={"max_new_tokens": 2},
        max_steps=2,
        eval_generate=False,
    )
    assert main(["train", str(write_config(root / "config.yaml", raw)), "--no-progress"]) == 0
    return out / "best"


def earlier_export(directory):
    """What a directory holds after an export of some other bundle (and a stray file)."""
    (directory / "prompt").mkdir(parents=True)
    (directory / "prompt" / "adapter_config.json").write_text('{"stale": true}')
    (directory / "config.json").write_text('{"model_type": "other"}')
    (directory / "notes.txt").write_text("mine")
    return sorted(p.relative_to(directory) for p in directory.rglob("*"))


def export(bundle, output, *extra: str) -> int:
    return main(["export", str(bundle), "--merge", "--output", str(output), *extra])


def one_line(text: str) -> str:
    """The one error line (progress bars of model loading aside), with no traceback."""
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def no_leftovers(directory) -> None:
    hidden = [p.name for p in directory.parent.iterdir() if p.name.startswith(f".{directory.name}")]
    assert hidden == []


def test_non_empty_output_is_refused_without_overwrite(lora_bundle, tmp_path, capsys):
    target = tmp_path / "merged"
    before = earlier_export(target)
    capsys.readouterr()
    assert export(lora_bundle, target) == 2
    line = one_line(capsys.readouterr().err)
    assert str(target) in line and "--overwrite" in line
    assert sorted(p.relative_to(target) for p in target.rglob("*")) == before
    assert (target / "config.json").read_text() == '{"model_type": "other"}'


def test_overwrite_replaces_the_directory_as_a_whole(lora_bundle, tmp_path):
    target = tmp_path / "merged"
    earlier_export(target)
    assert export(lora_bundle, target, "--overwrite") == 0
    assert not (target / "prompt").exists() and not (target / "notes.txt").exists()
    assert not any(
        "lora" in n for n, _ in AutoModelForCausalLM.from_pretrained(str(target)).named_parameters()
    )
    no_leftovers(target)


@pytest.mark.parametrize("exists", [True, False])
def test_empty_or_new_output_needs_no_overwrite(lora_bundle, tmp_path, exists):
    target = tmp_path / "deep" / "merged"
    if exists:
        target.mkdir(parents=True)
    assert export(lora_bundle, target) == 0
    assert (target / "config.json").is_file()
    no_leftovers(target)


def test_failed_export_leaves_the_old_directory_intact(lora_bundle, tmp_path, monkeypatch, capsys):
    target = tmp_path / "merged"
    before = earlier_export(target)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transformers.PreTrainedTokenizerBase, "save_pretrained", disk_full)
    capsys.readouterr()
    assert export(lora_bundle, target, "--overwrite") == 2
    line = one_line(capsys.readouterr().err)
    assert str(target) in line and "No space left" in line
    assert sorted(p.relative_to(target) for p in target.rglob("*")) == before
    no_leftovers(target)


@pytest.mark.parametrize("which", ["bundle", "run"])
def test_output_holding_the_bundle_is_refused_even_with_overwrite(lora_bundle, which, capsys):
    target = lora_bundle if which == "bundle" else lora_bundle.parent
    capsys.readouterr()
    assert export(lora_bundle, target, "--overwrite") == 2
    assert "holds the bundle" in one_line(capsys.readouterr().err)
    assert (lora_bundle / "adapter_bundle.json").is_file() or any(lora_bundle.iterdir())


def test_output_that_is_a_file_is_refused(lora_bundle, tmp_path, capsys):
    target = tmp_path / "merged"
    target.write_text("not a directory")
    capsys.readouterr()
    assert export(lora_bundle, target, "--overwrite") == 2
    assert "is a file" in one_line(capsys.readouterr().err)
    assert target.read_text() == "not a directory"


def test_a_full_disk_is_one_line_and_leaves_nothing(lora_bundle, tmpfs, capsys):
    fill(tmpfs)
    capsys.readouterr()
    assert export(lora_bundle, tmpfs / "merged") == 2
    line = one_line(capsys.readouterr().err)
    assert "no space left on device" in line.lower() and str(tmpfs) in line, line
    assert not (tmpfs / "merged").exists()
    no_leftovers(tmpfs / "merged")
