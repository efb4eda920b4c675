"""`softprompt train --launcher accelerate`: the same command, under `accelerate launch`."""

from __future__ import annotations

import os
import sys

# accelerate's launcher as a module of the running interpreter, so the processes it
# starts use the same environment whatever PATH holds.
ACCELERATE_LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]


def accelerate_launch_command(
    train_args: list[str],
    num_processes: int | None = None,
    config_file: str | None = None,
) -> list[str]:
    """The argv that runs `softprompt <train_args>` as data-parallel processes.

    Args:
        train_args: softprompt's own arguments, from `train` on (no launcher flags).
        num_processes: processes to start; default: the config file's, else one per GPU.
        config_file: an accelerate config (see configs/accelerate/).
    """
    command = list(ACCELERATE_LAUNCH)
    if config_file is not None:
        command += ["--config_file", config_file]
    else:
        # Without a config accelerate starts several processes only with --multi_gpu,
        # and warns about every setting it had to assume.
        if num_processes is not None and num_processes > 1:
            command.append("--multi_gpu")
        command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if num_processes is not None:
        command += ["--num_processes", str(num_processes)]
    return [*command, "-m", "softprompt", *train_args]


def is_main_process() -> bool:
    """False in the processes other than the first of a multi-process launch."""
    return int(os.environ.get("RANK", "0")) == 0
