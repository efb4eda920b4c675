"""The commands of the README and docs/ work as written (fast variants) and the config
reference (docs/config.md) is current."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from softprompt.commands.cli import build_parser, main
from softprompt.config.run import load_config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = sorted((ROOT / "docs").glob("*.md"))
REFERENCE = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")


def readme_commands() -> list[list[str]]:
    """Every `softprompt ...` line of a bash block in the README and docs/*.md."""
    pages = [README] + [p.read_text(encoding="utf-8") for p in DOCS]
    blocks = [b for page in pages for b in re.findall(r"```bash\n(.*?)```", page, flags=re.S)]
    commands = []
    for block in blocks:
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("softprompt "):
                commands.append(shlex.split(line)[1:])
    return commands


def test_config_reference_is_current():
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    from update_readme import render

    assert "<!-- config-reference:start -->" in REFERENCE
    assert render(REFERENCE) == REFERENCE, "run `make docs` to refresh the config reference"


def test_every_readme_command_parses_and_its_config_loads():
    commands = readme_commands()
    assert len(commands) >= 20
    parser = build_parser()
    for argv in commands:
        args = parser.parse_args(argv)
        if hasattr(args, "config"):
            load_config(ROOT / args.config, args.overrides)


def test_every_shipped_config_starts_with_its_command():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# softprompt "), path
        load_config(path)


def test_makefile_has_the_two_commands():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo:", "test:", "bench:", "lint:"):
        assert re.search(rf"^{target}", makefile, flags=re.M), target
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_readme_quick_start_on_the_real_model(tmp_path, capsys):
    """The quick start's train / resume / eval / predict on SmolLM2, shortened."""
    out = tmp_path / "run"
    fast = [
        f"training.output_dir={out}",
        "training.max_steps=2",
        "training.batch_size=2",
        "data.max_train_samples=4",
        "data.max_eval_samples=2",
        "data.max_input_length=64",
        "task.max_new_tokens=4",
    ]
    config = str(ROOT / "configs" / "aclsum_smollm2.yaml")
    assert main(["train", config, *fast, "--no-progress"]) == 0
    assert (
        main(["train", config, *fast, "training.max_steps=3", "--resume", "auto", "--no-progress"])
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                config,
                *fast,
                "--prompt",
                str(out / "best"),
                "--split",
                "test",
                "--no-progress",
            ]
        )
        == 0
    )
    assert '"rougeL"' in capsys.readouterr().out
    assert (
        main(
            [
                "predict",
                "--prompt",
                str(out / "best"),
                "--text",
                "We propose a parser.",
                "--max-new-tokens",
                "4",
                "--no-progress",
            ]
        )
        == 0
    )
    assert '"prediction"' in capsys.readouterr().out
