"""`softprompt sweep`: every combination of a grid of config values, trained in turn.

`--grid KEY=V1,V2,...` gives one config key and its values; the cells are the product
of all grids. Each cell is its own `softprompt train` process (so its peak memory is its
own and a crash stays in its cell) under `OUTPUT_DIR/<cell name>/`, its output in the
cell's `train.log`. A cell whose run finished (`all_results.json` present) is not rerun;
an interrupted one resumes from its newest checkpoint. Every cell's config is built
before anything trains, so a typo or a bad value fails in seconds, not after hours of
earlier cells. The table is written as `sweep.md` and `sweep.json`. `OUTPUT_DIR` is
locked while the sweep runs, and each cell's run locks its own folder (train/run_lock.py):
a second sweep into it stops at once, and a cell another process trains fails alone.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import re
import reprlib
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from softprompt.artifacts.manifest import write_bytes_atomically
from softprompt.config.run import ConfigError, RunConfig, check_key, load_config
from softprompt.train.run_lock import RunLock
from softprompt.workflows.compare import headline_test_metric, run_training_process, table_row

logger = logging.getLogger("softprompt")

MAX_CELLS = 1000
MAX_VALUE_CHARS = 40  # of one value in a cell name; longer ones are cut and hashed
MAX_NAME_BYTES = 200  # of a cell name; most filesystems allow 255
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
CELL_RECORD = "sweep_cell.json"
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60


@dataclass(frozen=True)
class Axis:
    """One `--grid`: a config key and the values it takes.

    Attributes:
        key: the config key (older names mapped to current ones).
        values: the values as written; parsed with YAML rules like any override.
    """

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Cell:
    """One combination of grid values.

    Attributes:
        name: its folder name under the sweep's output directory.
        settings: config key -> value text, one per grid key, in grid order.
    """

    name: str
    settings: dict[str, str] = field(hash=False)

    @property
    def overrides(self) -> list[str]:
        return [f"{key}={value}" for key, value in self.settings.items()]


@dataclass
class SweepResult:
    """What a sweep did: a row per finished cell, the cells that failed or did not run.

    Attributes:
        not_run: cells still to run (while the sweep runs), or skipped after a failure.
        stopped: the sweep stopped at a failure (`fail_fast`).
    """

    axes: list[Axis]
    rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)
    stopped: bool = False


def parse_grid(specs: list[str]) -> list[Axis]:
    """`["method.prompt_tuning.num_virtual_tokens=5,10", ...]` -> axes, checked.

    Values are split at commas; a value holding a comma is written in double quotes
    (`init_text="Summarize, briefly."`).

    Raises:
        ConfigError: no grid, a key the config schema lacks (naming the closest key),
            a key given twice, an empty value list, an empty or repeated value.
    """
    axes: list[Axis] = []
    for spec in specs:
        key_text, sep, values_text = spec.partition("=")
        if not sep or not key_text.strip():
            raise ConfigError(f"--grid {spec!r} must look like KEY=V1,V2,...")
        key = check_key(key_text, "grid key")
        if key == "training.output_dir":
            raise ConfigError(
                "--grid training.output_dir: each cell gets its own folder under "
                "--output-dir; sweep another key"
            )
        if any(axis.key == key for axis in axes):
            raise ConfigError(f"--grid {key!r} is given twice; put all its values in one --grid")
        axes.append(Axis(key, _split_values(spec, values_text)))
    if not axes:
        raise ConfigError("a sweep needs at least one --grid KEY=V1,V2,...")
    return axes


def _split_values(spec: str, text: str) -> tuple[str, ...]:
    try:
        fields = next(csv.reader([text], skipinitialspace=True, strict=True), [])
    except csv.Error as err:
        raise ConfigError(f"--grid {spec!r}: cannot split the values ({err})") from None
    values = [value.strip() for value in fields]
    if not values:
        raise ConfigError(f"--grid {spec!r}: no values given; write KEY=V1,V2,...")
    if any(not value for value in values):
        raise ConfigError(f"--grid {spec!r}: an empty value; write null for none")
    repeated = sorted({value for value in values if values.count(value) > 1})
    if repeated:
        raise ConfigError(f"--grid {spec!r}: {', '.join(repeated)} given more than once")
    return tuple(values)


def short_keys(keys: list[str]) -> dict[str, str]:
    """Each key's shortest dotted tail that no other key shares (`num_virtual_tokens`, but
    `lora.learning_rate` beside `training.learning_rate`)."""
    short = {}
    for key in keys:
        parts = key.split(".")
        tail = key
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if not any(o != key and (o == tail or o.endswith("." + tail)) for o in keys):
                break
        short[key] = tail
    return short


def _hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:6]


def safe_value(text: str) -> str:
    """A value as part of a folder name: characters other than letters, digits and `._+-`
    become `_`, long values are cut; a value so changed gets a hash of itself, so two
    values never share a name."""
    safe = _UNSAFE.sub("_", text)[:MAX_VALUE_CHARS]
    return safe if safe == text else f"{safe}-{_hash(text)}"


def make_cells(axes: list[Axis]) -> list[Cell]:
    """The product of the axes (the first grid varies slowest), each with a stable name
    such as `num_virtual_tokens=5,init_method=RANDOM`."""
    count = 1
    for axis in axes:
        count *= len(axis.values)
    if count > MAX_CELLS:
        raise ConfigError(f"the grid has {count:,} cells; a sweep runs at most {MAX_CELLS:,}")
    short = short_keys([axis.key for axis in axes])
    cells = []
    for values in itertools.product(*(axis.values for axis in axes)):
        settings = {axis.key: value for axis, value in zip(axes, values, strict=True)}
        name = ",".join(f"{short[key]}={safe_value(value)}" for key, value in settings.items())
        if len(name.encode("utf-8")) > MAX_NAME_BYTES:
            name = f"{name[: MAX_NAME_BYTES - 7]}-{_hash(name)}"
        cells.append(Cell(name, settings))
    return cells


def default_output_dir(config: str | Path, overrides: list[str], grid: list[str]) -> Path:
    """`<training.output_dir>/sweep`, read from the first cell's config (the file alone
    may lack what every cell sets, such as `init_text` for a grid of TEXT inits)."""
    first = make_cells(parse_grid(grid))[0]
    try:
        built = load_config(config, [*overrides, *first.overrides])
    except ConfigError as err:
        raise ConfigError(f"sweep cell {first.name}: {err}") from None
    return Path(built.training.output_dir) / "sweep"


def _output_override(cell_dir: Path) -> str:
    # JSON quoting is YAML quoting: a folder called `123` or `a: b` stays a string.
    return f"training.output_dir={json.dumps(str(cell_dir))}"


def cell_config(config: str | Path, overrides: list[str], cell: Cell, cell_dir: Path) -> RunConfig:
    """The cell's run config: the config file, the overrides, then the cell's values."""
    try:
        return load_config(config, [*overrides, *cell.overrides, _output_override(cell_dir)])
    except ConfigError as err:
        raise ConfigError(f"sweep cell {cell.name}: {err}") from None


def check_cells(
    config: str | Path, overrides: list[str], cells: list[Cell], output_dir: Path
) -> None:
    """Build every cell's config, and refuse a cell folder that holds a run of another
    config (the sweep was started before with other overrides): its results would be
    reported, or its checkpoint resumed, as if they were this cell's.

    Raises:
        ConfigError: naming the cell, and the key and value at fault.
    """
    for cell in cells:
        cell_dir = output_dir / cell.name
        built = cell_config(config, overrides, cell, cell_dir)
        changed = _changed_keys(cell_dir / "config.yaml", built)
        if changed:
            shown = "; ".join(
                f"{key}: {_SHORT.repr(old)} -> {_SHORT.repr(new)}" for key, old, new in changed[:4]
            )
            raise ConfigError(
                f"sweep cell {cell.name}: {cell_dir} holds a run of another config ({shown}); "
                "delete that folder to train the cell again, or choose another --output-dir"
            )


def _changed_keys(saved_path: Path, config: RunConfig) -> list[tuple[str, Any, Any]]:
    try:
        saved = yaml.safe_load(saved_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []  # no earlier run (or a torn file that training rewrites)
    if not isinstance(saved, dict):
        return []
    old, new = _flat(saved), _flat(config.model_dump(mode="json"))
    # Keys only one side has come from another softprompt version (a field added with
    # its default); the same folder may be named relative once and absolute the next.
    keys = sorted((old.keys() & new.keys()) - {"training.output_dir"})
    return [(key, old[key], new[key]) for key in keys if old[key] != new[key]]


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_cell(config: str | Path, overrides: list[str], cell: Cell, cell_dir: Path) -> int:
    """Train one cell in its own process, resuming its newest checkpoint; the exit status.

    The process's output is appended to `cell_dir/train.log`; the run locks `cell_dir`
    itself (train/run_lock.py), so a cell another process trains fails alone.

    Raises:
        TrainingInterrupted: the cell's training was stopped by a signal.
    """
    cell_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "softprompt", "train", str(config), *overrides]
    command += [*cell.overrides, _output_override(cell_dir), "--resume", "auto", "--no-progress"]
    with open(cell_dir / "train.log", "a", encoding="utf-8") as log:
        # Ctrl-C reaches the child as well: it finishes its step and saves a checkpoint
        # the next sweep resumes from; a signal that stopped the child alone stops the
        # sweep too (TrainingInterrupted), rather than counting as a failed cell.
        return run_training_process(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )


def _record_start(cell: Cell, cell_dir: Path) -> bool:
    """Note in the cell folder whether this attempt resumes a checkpoint; True if any
    attempt did (the run's train_runtime then counts the last attempt only)."""
    path = cell_dir / CELL_RECORD
    earlier = _read_json(path) or {}
    resumed = bool(earlier.get("resumed")) or any(cell_dir.glob("checkpoint-*"))
    cell_dir.mkdir(parents=True, exist_ok=True)
    record = {"settings": cell.settings, "resumed": resumed}
    write_bytes_atomically(path, json.dumps(record, indent=2).encode())
    return resumed


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def cell_row(cell: Cell, results: dict[str, Any], resumed: bool) -> dict[str, Any]:
    """One table row: the cell's settings and what its `all_results.json` says."""
    row = table_row(cell.name, results)
    del row["method"]
    return {
        "cell": cell.name,
        "settings": cell.settings,
        **row,
        "train_runtime": results["train_runtime"],
        "resumed": resumed,
    }


def sweep(
    config: str | Path,
    overrides: list[str],
    grid: list[str],
    output_dir: Path,
    fail_fast: bool = False,
) -> SweepResult:
    """Train every cell of the grid in turn; write `sweep.md` / `sweep.json` in `output_dir`.

    Args:
        config: the YAML config every cell starts from.
        overrides: `key=value` overrides applied to every cell (before the grid's).
        grid: `KEY=V1,V2,...` specs, one per swept key.
        output_dir: the sweep's folder; each cell trains in a sub-folder.
        fail_fast: stop at the first cell that fails (else run the others and report).

    Raises:
        ConfigError: a bad grid or a cell whose config does not build, before any training.
        RunDirInUse: another process holds `output_dir` (another sweep into it).
        KeyboardInterrupt: Ctrl-C or a signal to a cell (its checkpoint is then saved).
    """
    axes = parse_grid(grid)
    cells = make_cells(axes)
    check_cells(config, overrides, cells, output_dir)
    with RunLock(output_dir, label="--output-dir"):  # one sweep at a time in output_dir
        return _sweep_cells(config, overrides, cells, output_dir, SweepResult(axes), fail_fast)


def _sweep_cells(
    config: str | Path,
    overrides: list[str],
    cells: list[Cell],
    output_dir: Path,
    result: SweepResult,
    fail_fast: bool,
) -> SweepResult:
    """Train the cells in turn into `result`, rewriting the table after each."""
    result.not_run = [cell.name for cell in cells]
    for index, cell in enumerate(cells):
        where = f"cell {index + 1}/{len(cells)} {cell.name}"
        ok = _sweep_cell(config, overrides, cell, output_dir / cell.name, result, where)
        result.not_run.remove(cell.name)
        if not ok and fail_fast:
            result.stopped = True
        # Rewritten after every cell: a long sweep's table is readable while it runs.
        write_outputs(result, output_dir, config, overrides)
        if result.stopped:
            break
    return result


def _sweep_cell(
    config: str | Path,
    overrides: list[str],
    cell: Cell,
    cell_dir: Path,
    result: SweepResult,
    where: str,
) -> bool:
    """Train the cell unless it finished earlier; add its row or its failure to `result`.
    True if it has a row."""
    finished = cell_dir / "all_results.json"
    if finished.is_file():
        logger.info("%s: finished earlier, not rerun", where)
        resumed = bool((_read_json(cell_dir / CELL_RECORD) or {}).get("resumed"))
    else:
        resumed = _record_start(cell, cell_dir)
        logger.info("%s: training (output in %s)", where, cell_dir / "train.log")
        status = run_cell(config, overrides, cell, cell_dir)
        if status != 0 or not finished.is_file():
            result.failures.append(_failure(cell, cell_dir, status))
            logger.error("%s: failed (exit status %d); see %s", where, status, cell_dir)
            return False
    results = _read_json(finished)
    if results is None:
        result.failures.append(_failure(cell, cell_dir, None, "unreadable all_results.json"))
        return False
    result.rows.append(cell_row(cell, results, resumed))
    return True


def _failure(cell: Cell, cell_dir: Path, status: int | None, reason: str = "") -> dict[str, Any]:
    log = cell_dir / "train.log"
    try:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-5:]
    except OSError:
        tail = []
    reason = reason or f"training exited with status {status}"
    return {"cell": cell.name, "settings": cell.settings, "reason": reason,
            "log": str(log), "log_tail": tail}  # fmt: skip


def write_outputs(
    result: SweepResult, output_dir: Path, config: str | Path, overrides: list[str]
) -> None:
    """`sweep.json` (settings, rows, failures) and `sweep.md` (the table) in `output_dir`."""
    record = {
        "config": str(config),
        "overrides": overrides,
        "grid": {axis.key: list(axis.values) for axis in result.axes},
        "rows": result.rows,
        "failures": result.failures,
        "not_run": result.not_run,
        "stopped": result.stopped,
    }
    write_bytes_atomically(output_dir / "sweep.json", json.dumps(record, indent=2).encode())
    write_bytes_atomically(output_dir / "sweep.md", markdown(result).encode())


def markdown(result: SweepResult) -> str:
    """One row per finished cell: its settings | trainable params | train time | peak
    memory | best metric | test metric | best step; then the failed cells."""
    keys = [axis.key for axis in result.axes]
    short, rows = short_keys(keys), result.rows
    metric = rows[0]["metric"] if rows else "metric"
    test = next((found[0] for r in rows if (found := headline_test_metric(r))), None)
    header = [short[key] for key in keys]
    header += ["trainable params", "train time (s)", "peak memory (MB)", f"best {metric}"]
    header += [f"test {test}"] if test else []
    header.append("best step")
    rule = "|" + "---|" * len(keys) + "---:|" * (len(header) - len(keys))
    lines = ["| " + " | ".join(header) + " |", rule]
    for r in rows:
        cells = [r["settings"][key] for key in keys]
        memory, best = r["peak_memory_mb"], r["best_metric"]
        cells += [
            f"{r['trainable_parameters']:,}",
            f"{r['train_runtime']:.1f}" + ("*" if r["resumed"] else ""),
            "-" if memory is None else f"{memory:,.0f}",
            "-" if best is None else f"{best:.4f}",
        ]
        if test:
            value = r["test"].get(f"test_{test}")
            cells.append("-" if value is None else f"{value:.4f}")
        cells.append(str(r["best_step"] or "-"))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if any(r["resumed"] for r in rows):
        lines += ["", "\\* resumed from a checkpoint: the time since the resume."]
    if result.failures:
        lines += ["", "Failed:"]
        lines += [f"- `{f['cell']}`: {f['reason']} (log: {f['log']})" for f in result.failures]
    if result.not_run:
        why = "stopped at the first failure" if result.stopped else "still to run"
        lines += ["", f"Not run ({why}):"]
        lines += [f"- `{name}`" for name in result.not_run]
    return "\n".join(lines) + "\n"
