"""Prompt names never lead outside their root: absolute paths, '..', symlinks, NUL bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softprompt.artifacts.prompt_dir import fingerprint, save_prompt
from softprompt.backbones.loading import load_backbone
from softprompt.commands.cli import main
from softprompt.paths import UnsafeNameError, is_inside, resolve_prompt_name, resolve_under


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """prompts/ with a real prompt folder, a symlink inside it and one leading out."""
    base = tmp_path_factory.mktemp("paths")
    prompts = base / "prompts"
    (prompts / "run1" / "best").mkdir(parents=True)
    (base / "outside").mkdir()
    (base / "outside" / "secret.txt").write_text("no")
    os.symlink(prompts / "run1", prompts / "alias")  # stays inside: allowed
    os.symlink(base / "outside", prompts / "escape")  # leads out: refused
    os.symlink("../../outside", prompts / "run1" / "up")  # relative, leads out: refused
    return prompts


@pytest.mark.parametrize(
    "name", ["best", "run1/best", "run1/best/", "alias/best", "new-run_2/checkpoint-40", "ü"]
)
def test_good_names_resolve_inside(root, name):
    path = resolve_prompt_name(root, name)
    assert is_inside(root, path)


@pytest.mark.parametrize(
    "name,reason",
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("../outside", "'..'"),
        ("run1/../../outside", "'..'"),
        ("run1/./best", "'.'"),
        ("run1//best", "empty part"),
        ("best\x00.txt", "NUL"),
        ("~root", "'~'"),
        ("run1\\..\\..\\outside", "backslash"),
        (".tmp-checkpoint-5-123", "hidden"),
        ("escape", "outside"),
        ("escape/secret.txt", "outside"),
        ("run1/up", "outside"),
        ("a b", "characters"),
        ("a;rm -rf", "characters"),
        ("x" * 300, "longer"),
        ("/".join("a" * 9), "parts"),
        (None, "not text"),
        (b"best", "not text"),
    ],
)
def test_unsafe_names_are_refused_with_the_reason(root, name, reason):
    with pytest.raises(UnsafeNameError) as err:
        resolve_prompt_name(root, name)
    assert reason in str(err.value) and "prompt name" in str(err.value)


# Names built from the pieces that matter: separators, dots, the links above, odd bytes.
pieces = st.sampled_from(
    ["/", ".", "..", "\x00", "~", "\\", "run1", "best", "alias", "escape", "up", "secret.txt", "a"]
)
names = st.lists(pieces, max_size=8).map("".join) | st.text(max_size=20)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=names)
def test_any_name_resolves_inside_root_or_is_refused(root, name):
    try:
        path = resolve_under(root, name)
    except UnsafeNameError as err:
        assert "\n" not in str(err)
        return
    assert is_inside(root, path), (name, path)
    assert "\x00" not in str(path) and ".." not in Path(name).parts
    assert not Path(name).is_absolute()


@pytest.fixture
def prompt_root(tiny_models, tmp_path):
    backbone = load_backbone(str(tiny_models["gpt2"]))
    save_prompt(
        tmp_path / "prompts" / "colours" / "best",
        torch.zeros(4, backbone.hidden_size),
        family="causal_lm",
        base_model=str(tiny_models["gpt2"]),
        fingerprint_info=fingerprint(backbone.word_embeddings(), backbone.tokenizer),
    )
    return tmp_path / "prompts"


def test_cli_prompts_dir_resolves_names_safely(prompt_root, capsys):
    argv = ["predict", "--prompts-dir", str(prompt_root), "--text", "red", "--no-progress"]
    assert main([*argv, "--prompt", "colours/best", "--max-new-tokens", "2"]) == 0
    assert "prediction" in capsys.readouterr().out
    for name in ("../prompts/colours/best", str(prompt_root / "colours" / "best")):
        assert main([*argv, "--prompt", name]) == 2
        err = capsys.readouterr().err
        assert "prompt name" in err and "not allowed" in err and "Traceback" not in err
