"""Scripts in tools/ that the README tells users to run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_easyvqa_by_type_splits_accuracy_by_question_type(tmp_path) -> None:
    rows = [
        ("what shape is in the image?", "circle", ["circle"]),
        ("what color is the shape?", "red", ["brown"]),
        ("is there a red shape?", "no", ["yes"]),
        ("is there a circle?", "yes", ["yes"]),
        ("is there not a triangle?", "Yes", ["yes"]),
        ("is no blue shape present?", "no", ["yes"]),
    ]
    path = tmp_path / "preds.test.jsonl"
    path.write_text(
        "".join(
            json.dumps({"question": q, "prediction": p, "references": r}) + "\n" for q, p, r in rows
        )
    )
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "easyvqa_by_type.py"), str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = {line.split(":")[0].strip(): line.split(":")[1].strip() for line in out.splitlines()}
    assert lines == {
        "shape": "100.0% of 1",
        "colour": "0.0% of 1",
        "yes/no": "50.0% of 2",
        "negated yes/no": "50.0% of 2",
        "all": "50.0%",
    }


def test_gpu_check_refuses_without_cuda_and_runs_its_checks_on_the_cpu(tiny_models) -> None:
    """tools/gpu_check.sh is for GPU machines; --cpu runs the same checks here (gloo)."""
    script = [str(ROOT / "tools" / "gpu_check.sh")]
    env = {"PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    refused = subprocess.run(script, capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 2 and "no CUDA device here" in refused.stdout
    flags = ["--cpu", "--model", str(tiny_models["llama"]), "--steps", "3"]
    flags += ["--only", "qlora", "ddp", "fsdp", "server"]
    done = subprocess.run([*script, *flags], capture_output=True, text=True, env=env, timeout=900)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert [line.split(":")[0] for line in lines] == ["qlora", "ddp", "fsdp", "server"]
    assert "skipped on the CPU" in lines[0]
    assert "2 processes (gloo)" in lines[1]
    assert "blocks over 2 processes" in lines[2]
    assert lines[3].startswith("server: 20/20 completions answered")
