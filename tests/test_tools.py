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
