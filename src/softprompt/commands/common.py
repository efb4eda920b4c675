"""What several sub-commands share: the usage exit code and the prompt / adapter flags."""

from __future__ import annotations

import argparse

# What argparse itself exits with on a bad command line; ours mean the same.
EXIT_USAGE = 2


def add_adapter_switch(p: argparse.ArgumentParser) -> None:
    """Add the repeatable `--adapter NAME=on|off` flag (read it with `adapter_switches`)."""
    p.add_argument(
        "--adapter",
        action="append",
        metavar="NAME=on|off",
        help="switch an adapter of the bundle on or off (prompt, lora), e.g. --adapter "
        "prompt=off; repeatable; no reload, no retraining",
    )


def add_prompts_dir(p: argparse.ArgumentParser) -> None:
    """Add `--prompts-dir`, under which `--prompt` names a prompt (see `prompt_path`)."""
    p.add_argument(
        "--prompts-dir",
        help="folder of prompts; --prompt is then a name inside it (e.g. my_run/best), "
        "refused if it would lead outside the folder",
    )


def prompt_path(args: argparse.Namespace) -> str | None:
    """--prompt is a directory path, or with --prompts-dir a name resolved safely under it."""
    if args.prompt is None or args.prompts_dir is None:
        return args.prompt
    from softprompt.paths import resolve_prompt_name

    return str(resolve_prompt_name(args.prompts_dir, args.prompt))


def adapter_switches(values: list[str] | None) -> dict[str, bool]:
    """`--adapter lora=off --adapter prompt=on` -> {"lora": False, "prompt": True}.

    Raises:
        ConfigError: a value is not NAME=on or NAME=off.
    """
    from softprompt.config.run import ConfigError

    states = {}
    for value in values or []:
        name, _, state = value.partition("=")
        if state.lower() not in ("on", "off", "true", "false", "1", "0"):
            raise ConfigError(f"--adapter {value!r}: expected NAME=on or NAME=off")
        states[name.strip()] = state.lower() in ("on", "true", "1")
    return states


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 1-65535."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number: pick one in 1-65535")
    return port
