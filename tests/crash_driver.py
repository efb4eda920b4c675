"""`softprompt ...` slowed down so a test can kill it at a chosen moment.

Tiny models train a step in milliseconds, too fast to aim a kill at. This driver adds
pauses (seconds, from the environment) at the points the crash tests aim at, then runs
the real command line:

* CRASH_STEP_PAUSE: before every optimizer step (kills land between steps);
* CRASH_WRITE_PAUSE: after each optimizer/scheduler state file of a checkpoint (the
  temporary directory is half-written) and before its files are synced and the directory
  renamed (complete, but not yet in place);
* CRASH_PID_DIR: each process writes its pid to `rank-N` there (N: its process index
  under `accelerate launch`), so a test can signal one process of a multi-process run.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

import softprompt.train.checkpoint as checkpoint
from softprompt.commands.cli import main

STEP_PAUSE = float(os.environ.get("CRASH_STEP_PAUSE", "0"))
WRITE_PAUSE = float(os.environ.get("CRASH_WRITE_PAUSE", "0"))


def _slow_step(original):
    def step(self, *args, **kwargs):
        time.sleep(STEP_PAUSE)
        return original(self, *args, **kwargs)

    return step


def _pause_after(original):
    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        time.sleep(WRITE_PAUSE)
        return result

    return wrapper


def _pause_before(original):
    def wrapper(*args, **kwargs):
        time.sleep(WRITE_PAUSE)
        return original(*args, **kwargs)

    return wrapper


if __name__ == "__main__":
    if os.environ.get("CRASH_PID_DIR"):
        rank = os.environ.get("RANK", "0")
        (Path(os.environ["CRASH_PID_DIR"]) / f"rank-{rank}").write_text(str(os.getpid()))
    # One thread: the same arithmetic, bit for bit, as the test process it is compared with.
    torch.set_num_threads(1)
    torch.optim.AdamW.step = _slow_step(torch.optim.AdamW.step)
    checkpoint.save_state = _pause_after(checkpoint.save_state)
    checkpoint._fsync_files = _pause_before(checkpoint._fsync_files)
    sys.exit(main(sys.argv[1:]))
