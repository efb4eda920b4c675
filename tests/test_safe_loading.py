"""Safe loading: no pickles, checksummed prompts and checkpoints, damaged files refused."""

from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import get_scheduler

from softprompt.artifacts.prompt_dir import PromptLoadError, load_prompt, save_prompt
from softprompt.train.checkpoint import (
    STATE_FILE,
    CheckpointError,
    TrainState,
    find_latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    validate_checkpoint,
)
from softprompt.train.state_files import StateFileError, load_state, save_state

REPO = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("src", "bench", "demo", "tools")


# ----------------------------------------------------------------------------- no unpickling


def unsafe_loads(source: str) -> list[str]:
    """Calls that can unpickle: torch.load without weights_only=True, pickle/dill/joblib."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module in ("torch", "pickle", "dill"):
            if any(alias.name in ("load", "loads", "Unpickler") for alias in node.names):
                found.append(f"line {node.lineno}: from {node.module} import load")
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        owner_name = owner.id if isinstance(owner, ast.Name) else None
        attr = node.func.attr
        if owner_name == "torch" and attr == "load":
            safe = any(
                k.arg == "weights_only"
                and isinstance(k.value, ast.Constant)
                and k.value.value is True
                for k in node.keywords
            )
            if not safe:
                found.append(f"line {node.lineno}: torch.load without weights_only=True")
        if owner_name in ("pickle", "dill", "joblib", "cloudpickle") and attr in (
            "load",
            "loads",
            "Unpickler",
        ):
            found.append(f"line {node.lineno}: {owner_name}.{attr}")
        if owner_name in ("np", "numpy") and attr == "load":
            if any(k.arg == "allow_pickle" for k in node.keywords):
                found.append(f"line {node.lineno}: numpy.load with allow_pickle")
    return found


def test_the_checker_catches_unsafe_loads():
    bad = (
        "import torch, pickle\n"
        "torch.load(p)\n"
        "torch.load(p, weights_only=False)\n"
        "pickle.loads(b)\n"
        "from torch import load\n"
        "np.load(p, allow_pickle=True)\n"
    )
    assert len(unsafe_loads(bad)) == 5
    assert unsafe_loads("torch.load(p, map_location='cpu', weights_only=True)\n") == []


def test_no_code_path_unpickles_without_weights_only():
    problems = []
    for folder in SOURCE_DIRS:
        for path in sorted((REPO / folder).rglob("*.py")):
            for problem in unsafe_loads(path.read_text(encoding="utf-8")):
                problems.append(f"{path.relative_to(REPO)}: {problem}")
    assert not problems, "unsafe deserialisation:\n" + "\n".join(problems)


# ----------------------------------------------------------------------------- state files


def trained_optimizer():
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.ones(2, 2))
    optimizer = torch.optim.AdamW([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.01}])
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=1, num_training_steps=10)
    for _ in range(3):
        a.grad, b.grad = torch.randn(3), torch.randn(2, 2)
        optimizer.step()
        scheduler.step()
    return [a, b], optimizer, scheduler


def same(x, y) -> bool:
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and torch.equal(x, y) and x.dtype == y.dtype
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
    if isinstance(x, list | tuple):
        return type(x) is type(y) and len(x) == len(y) and all(map(same, x, y))
    return type(x) is type(y) and x == y


def test_state_files_round_trip_exactly(tmp_path):
    _, optimizer, scheduler = trained_optimizer()
    for name, state in (("opt", optimizer.state_dict()), ("sched", scheduler.state_dict())):
        save_state(state, tmp_path / f"{name}.safetensors")
        assert same(state, load_state(tmp_path / f"{name}.safetensors")), name
    odd = {"k": {1: (0.1, float("inf")), "x": [None, True, "s"]}, "__dict__": 1}
    save_state(odd, tmp_path / "odd.safetensors")
    assert same(odd, load_state(tmp_path / "odd.safetensors"))


def test_state_files_refuse_damage(tmp_path):
    (tmp_path / "garbage.safetensors").write_bytes(b"garbage" * 10)
    save_file({"t0": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    for name in ("garbage", "plain"):
        with pytest.raises(StateFileError):
            load_state(tmp_path / f"{name}.safetensors")
    with pytest.raises(TypeError, match="object"):
        save_state({"x": object()}, tmp_path / "bad.safetensors")


# ----------------------------------------------------------------------------- checkpoints


def write_checkpoint(run_dir: Path, step: int, optimizer, scheduler) -> Path:
    def write_prompt(directory: Path) -> None:
        save_prompt(
            directory,
            torch.full((2, 4), float(step)),
            family="causal_lm",
            base_model="tiny",
            fingerprint_info={},
        )

    return save_checkpoint(
        run_dir, TrainState(global_step=step), write_prompt, optimizer, scheduler
    )


@pytest.fixture
def run_dir(tmp_path):
    _, optimizer, scheduler = trained_optimizer()
    run = tmp_path / "run"
    run.mkdir()
    for step in (2, 4):
        write_checkpoint(run, step, optimizer, scheduler)
    return run


def test_checkpoints_hold_no_pickles_and_restore_exactly(run_dir):
    files = {f.name for f in (run_dir / "checkpoint-4").iterdir()}
    assert not {f for f in files if f.endswith((".pt", ".bin", ".pkl"))}, files
    params, optimizer, scheduler = trained_optimizer()
    fresh_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fresh = torch.optim.AdamW([{"params": [fresh_params[0]]}, {"params": [fresh_params[1]]}])
    fresh_scheduler = get_scheduler("linear", fresh, num_warmup_steps=1, num_training_steps=10)
    state = load_checkpoint(run_dir / "checkpoint-4", fresh, fresh_scheduler)
    assert state.global_step == 4
    assert same(fresh.state_dict(), optimizer.state_dict())
    assert same(fresh_scheduler.state_dict(), scheduler.state_dict())


def test_checkpoint_written_before_safetensors_state_still_loads(run_dir):
    """The layout of earlier versions: pickled `.pt` state (read with weights_only=True)
    and the data position counted in batches."""
    legacy = run_dir / "checkpoint-4"
    _, optimizer, scheduler = trained_optimizer()
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler)):
        (legacy / f"{name}.safetensors").unlink()
        torch.save(obj.state_dict(), legacy / f"{name}.pt")
    payload = json.loads((legacy / STATE_FILE).read_text())
    files = payload["files"]
    for name in ("optimizer", "scheduler"):
        del files[f"{name}.safetensors"]
    from softprompt.artifacts.prompt_dir import sha256_file

    files.update({f"{n}.pt": sha256_file(legacy / f"{n}.pt") for n in ("optimizer", "scheduler")})
    del payload["samples_in_epoch"], payload["examples_per_step"]
    payload["batch_in_epoch"] = 3
    (legacy / STATE_FILE).write_text(json.dumps(payload))
    _, fresh, fresh_scheduler = trained_optimizer()
    state = load_checkpoint(legacy, fresh, fresh_scheduler, batch_size=4)
    assert (state.global_step, state.samples_in_epoch, state.examples_per_step) == (4, 12, 4)
    assert same(fresh.state_dict(), optimizer.state_dict())


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_text("[1, 2]"),
        lambda p: p.write_text('{"global_step": 4}'),
        lambda p: p.write_text('{"files": {}}'),
        lambda p: p.write_text('{"files": {"../../etc/passwd": "00"}}'),
        lambda p: p.write_bytes(b"\xff\xfe"),
        lambda p: p.write_text("{" * 100000),
    ],
    ids=["not-an-object", "no-checksums", "empty-checksums", "path-in-checksums", "binary", "deep"],
)
def test_damaged_trainer_state_is_refused_and_skipped(run_dir, damage):
    damage(run_dir / "checkpoint-4" / STATE_FILE)
    with pytest.raises(CheckpointError):
        validate_checkpoint(run_dir / "checkpoint-4")
    assert find_latest_checkpoint(run_dir) == run_dir / "checkpoint-2"


@pytest.mark.parametrize(
    "field,value",
    [
        ("global_step", "four"),
        ("epoch", -1),
        ("samples_in_epoch", 2.5),
        ("examples_per_step", True),
        ("bad_evals", None),
        ("batch_in_epoch", "2"),  # the earlier name of the data position
    ],
)
def test_bad_step_counters_are_refused(run_dir, field, value):
    state_path = run_dir / "checkpoint-4" / STATE_FILE
    payload = json.loads(state_path.read_text())
    if field == "batch_in_epoch":
        del payload["samples_in_epoch"]
    payload[field] = value
    state_path.write_text(json.dumps(payload))
    _, optimizer, scheduler = trained_optimizer()
    with pytest.raises(CheckpointError, match="counters"):
        load_checkpoint(run_dir / "checkpoint-4", optimizer, scheduler)


def test_checkpoint_of_another_run_is_refused(run_dir):
    single = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))])
    scheduler = get_scheduler("linear", single, num_warmup_steps=1, num_training_steps=10)
    with pytest.raises(CheckpointError, match="different config"):
        load_checkpoint(run_dir / "checkpoint-4", single, scheduler)


def test_symlinked_checkpoint_outside_the_run_is_ignored(run_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(run_dir / "checkpoint-4", elsewhere / "checkpoint-99")
    os.symlink(elsewhere / "checkpoint-99", run_dir / "checkpoint-99")
    assert find_latest_checkpoint(run_dir) == run_dir / "checkpoint-4"
    os.symlink(run_dir / "checkpoint-4", run_dir / "checkpoint-50")  # inside: fine
    assert find_latest_checkpoint(run_dir) == run_dir / "checkpoint-50"


def test_leftovers_of_killed_writers_are_cleaned_and_never_loaded(run_dir):
    dead = run_dir / ".tmp-checkpoint-6-999999999"
    shutil.copytree(run_dir / "checkpoint-4", dead)  # complete but never renamed
    live = run_dir / f".tmp-checkpoint-8-{os.getppid()}"
    live.mkdir()
    assert find_latest_checkpoint(run_dir) == run_dir / "checkpoint-4"
    _, optimizer, scheduler = trained_optimizer()
    write_checkpoint(run_dir, 6, optimizer, scheduler)
    assert not dead.exists() and live.exists()  # a live process's directory is its own
    prune_checkpoints(run_dir, 1)
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".tmp-")) == [
        "checkpoint-6"
    ]


def test_a_best_dir_set_aside_by_a_killed_run_is_put_back(run_dir):
    dead = 999999999
    shutil.copytree(run_dir / "checkpoint-2", run_dir / f".old-best-{dead}")
    shutil.copytree(run_dir / "checkpoint-2", run_dir / f".tmp-best-{dead}")
    shutil.copytree(run_dir / "checkpoint-2", run_dir / f".del-checkpoint-1-{dead}")
    _, optimizer, scheduler = trained_optimizer()
    write_checkpoint(run_dir, 6, optimizer, scheduler)
    assert (run_dir / "best" / STATE_FILE).is_file()  # the replacement never came: restored
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]
    shutil.copytree(run_dir / "checkpoint-2", run_dir / f".old-best-{dead}")
    write_checkpoint(run_dir, 8, optimizer, scheduler)
    assert not (run_dir / f".old-best-{dead}").exists()  # best/ is there: the old one goes


def test_resaving_a_step_replaces_it_atomically(run_dir):
    _, optimizer, scheduler = trained_optimizer()
    write_checkpoint(run_dir, 4, optimizer, scheduler)
    assert validate_checkpoint(run_dir / "checkpoint-4")["global_step"] == 4
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------- prompts


@pytest.fixture
def prompt_dir(tmp_path):
    return save_prompt(
        tmp_path / "p",
        torch.randn(3, 4),
        family="causal_lm",
        base_model="tiny",
        fingerprint_info={},
    )


def test_tampered_adapter_config_fails_its_checksum(prompt_dir):
    config = prompt_dir / "adapter_config.json"
    config.write_text(
        config.read_text().replace('"num_virtual_tokens": 3', '"num_virtual_tokens": 2')
    )
    with pytest.raises(PromptLoadError, match="checksum"):
        load_prompt(prompt_dir)


@pytest.mark.parametrize(
    "name,content",
    [
        ("softprompt.json", "not json"),
        ("softprompt.json", "[]"),
        ("softprompt.json", '{"files": {"../../x": "00"}}'),
        ("softprompt.json", '{"files": ["adapter_model.safetensors"]}'),
        ("adapter_config.json", "[]"),
        ("adapter_model.safetensors", "garbage"),
    ],
)
def test_damaged_prompt_files_are_refused(prompt_dir, name, content):
    if name != "softprompt.json":
        (prompt_dir / "softprompt.json").unlink()  # no checksums: the loader itself must cope
    (prompt_dir / name).write_text(content)
    with pytest.raises(PromptLoadError):
        load_prompt(prompt_dir)


def test_prompt_with_bad_shapes_or_counts_is_refused(prompt_dir):
    (prompt_dir / "softprompt.json").unlink()
    config_path = prompt_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    for bad in ("three", -1, 99):
        config_path.write_text(json.dumps({**config, "num_virtual_tokens": bad}))
        with pytest.raises(PromptLoadError, match="num_virtual_tokens"):
            load_prompt(prompt_dir)
    config_path.write_text(json.dumps(config))
    save_file({"prompt_embeddings": torch.zeros(4)}, str(prompt_dir / "adapter_model.safetensors"))
    with pytest.raises(PromptLoadError, match="2-D"):
        load_prompt(prompt_dir)


class _RunsCode:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_code_in_a_peft_bin_prompt_never_runs(prompt_dir, tmp_path):
    (prompt_dir / "softprompt.json").unlink()
    (prompt_dir / "adapter_model.safetensors").unlink()
    marker = tmp_path / "code-ran"
    torch.save({"prompt_embeddings": _RunsCode(marker)}, prompt_dir / "adapter_model.bin")
    with pytest.raises(PromptLoadError, match="not plain tensors"):
        load_prompt(prompt_dir)
    assert not marker.exists()
