"""Where training metrics go besides metrics.jsonl, and the progress line.

`training.report_to` names dashboards from the `DASHBOARDS` registry; each receives every
record the run's `MetricsLog` writes (train, eval and test events), only on the main
process. TensorBoard event files go to `RUN_DIR/tensorboard/`:

    tensorboard --logdir runs/my_run/tensorboard
"""

from __future__ import annotations

import datetime
import logging
import math
from pathlib import Path
from typing import Any, Protocol

from softprompt.config.run import ConfigError
from softprompt.registry import Registry

logger = logging.getLogger("softprompt")

TENSORBOARD_DIR = "tensorboard"


class Dashboard(Protocol):
    """Receives metric records as `MetricsLog` writes them."""

    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


# name (as `training.report_to` spells it) -> factory(run_dir, purge_step) -> Dashboard
DASHBOARDS: Registry = Registry("dashboard")


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record as dashboard tags -> values.

    `{"event": "eval", "step": 10, "eval_loss": 0.5}` -> `{"eval/loss": 0.5}`; train
    records keep their names under `train/` (`train/loss`, `train/learning_rate`, ...).
    Non-numbers (a confusion matrix, strings) are left out; so are step and event.
    """
    event = str(record.get("event", "train"))
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in ("event", "step") or isinstance(value, bool):
            continue
        if isinstance(value, int | float) and math.isfinite(value):
            out[f"{event}/{key.removeprefix(event + '_')}"] = float(value)
    return out


class TensorBoardDashboard:
    """TensorBoard event files under `RUN_DIR/tensorboard/`, one scalar per metric.

    Args:
        run_dir: the run directory.
        purge_step: on resume, the first step logged again: TensorBoard hides the older
            run's events from that step on, as metrics.jsonl drops its records.
    """

    def __init__(self, run_dir: Path, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # torch raises this when the tensorboard package is absent
            raise ConfigError(
                "training.report_to: tensorboard needs the tensorboard package "
                "(pip install 'softprompt[tensorboard]')"
            ) from err
        self.writer = SummaryWriter(
            log_dir=str(Path(run_dir) / TENSORBOARD_DIR), purge_step=purge_step
        )

    def write(self, record: dict[str, Any]) -> None:
        step = record.get("step")
        step = step if isinstance(step, int) else None
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=step)
        # A few records per minute at most: flushing each keeps the files current for a
        # TensorBoard watching the run, and complete if the run is killed.
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


DASHBOARDS.register("tensorboard")(TensorBoardDashboard)


def open_dashboards(
    names: list[str], run_dir: Path, purge_step: int | None = None
) -> list[Dashboard]:
    """The dashboards `training.report_to` names (an empty list for none)."""
    opened = []
    for name in names:
        if name not in DASHBOARDS:
            known = ", ".join(DASHBOARDS.names())
            raise ConfigError(f"training.report_to: unknown dashboard {name!r}; known: {known}")
        opened.append(DASHBOARDS.get(name)(run_dir, purge_step))
    return opened


def format_duration(seconds: float) -> str:
    """`3725.2` -> `1:02:05` (whole seconds; `?` when unknown)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    return str(datetime.timedelta(seconds=round(seconds)))


def eta_seconds(step: int, total_steps: int, examples_per_step: int, samples_per_s: float) -> float:
    """Time left: the remaining steps' examples at the throughput so far."""
    remaining = max(total_steps - step, 0) * examples_per_step
    if remaining == 0:
        return 0.0
    return remaining / samples_per_s if samples_per_s > 0 else math.inf


def progress_fields(record: dict[str, Any], eta: float) -> dict[str, str]:
    """What the progress bar shows after the step counter: loss, lr, samples/s, ETA."""
    return {
        "loss": f"{record['loss']:.4f}",
        "lr": f"{record['learning_rate']:.2e}",
        "samples/s": f"{record['samples_per_second']:.1f}",
        "eta": format_duration(eta),
    }


def show_progress(run, record: dict[str, Any], bar) -> None:
    """Put a train record on the progress bar, or log it as a line when there is no bar.

    Args:
        run: the `Run` (for the step count and examples per step).
        record: a "train" record of metrics.jsonl.
        bar: the tqdm bar (disabled without --progress and on other processes).
    """
    eta = eta_seconds(
        record["step"], run.total_steps, run.examples_per_step, record["samples_per_second"]
    )
    fields = progress_fields(record, eta)
    if not bar.disable:
        bar.set_postfix(fields, refresh=False)
    elif run.main:
        line = ", ".join(f"{k}={v}" for k, v in fields.items())
        logger.info("step %d/%d: %s", record["step"], run.total_steps, line)
