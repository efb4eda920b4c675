"""The demo's recipe over several seeds: accuracy on the 2,000 test questions and minutes.

    python bench/demo_seeds.py [--seeds 0 1 2] [--config CONFIG] [key=value ...]

Each seed is one `softprompt train CONFIG training.seed=S` in its own process, exactly as
a user runs it (the config trains, then scores the test split once); the wall time counts
loading, training and the test evaluation. Accuracy by question type comes from the
run's predictions.test.jsonl (tools/easyvqa_by_type.py's types). The target: every seed
at least 94%, each within 12 minutes on this machine.
Results: stdout and bench/results/demo_seeds.json (every seed, median, min-max, mean, std).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tools"))

from easyvqa_by_type import question_type  # noqa: E402
from machine import machine, spread  # noqa: E402

OUT = HERE / "results" / "demo_seeds.json"
CONFIG = ROOT / "configs" / "easyvqa_effnet_smollm2.yaml"
TARGET_ACCURACY, TARGET_MINUTES = 94.0, 12.0
TYPES = ("shape", "colour", "yes/no", "negated yes/no")


def by_type(predictions: Path) -> dict[str, float]:
    total: collections.Counter[str] = collections.Counter()
    right: collections.Counter[str] = collections.Counter()
    for line in predictions.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        kind = question_type(record["question"])
        total[kind] += 1
        right[kind] += record["prediction"].strip().lower() in [
            a.strip().lower() for a in record["references"]
        ]
    return {kind: 100 * right[kind] / total[kind] for kind in TYPES if total[kind]}


def run_seed(config: Path, seed: int, overrides: list[str]) -> dict:
    run_dir = ROOT / "runs" / "bench" / f"demo_seed{seed}"
    command = [
        sys.executable, "-m", "softprompt", "train", str(config), f"training.seed={seed}",
        f"training.output_dir={run_dir}", "training.overwrite_output_dir=true", *overrides,
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    minutes = (time.perf_counter() - started) / 60
    results = json.loads((run_dir / "all_results.json").read_text(encoding="utf-8"))
    return {
        "seed": seed,
        "test_accuracy": results["test_exact_match"],
        "test_samples": results.get("test_num_samples"),
        "steps": results["global_step"],
        "minutes": minutes,
        "by_type": by_type(run_dir / "predictions.test.jsonl"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("overrides", nargs="*", help="config overrides, key.sub=value")
    args = parser.parse_args()
    host = machine(threads=os.cpu_count() or 1)  # torch's default: one thread per core
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(args.config, seed, args.overrides))
        run = runs[-1]
        print(
            f"seed {seed}: {run['test_accuracy']:.2f}% in {run['minutes']:.1f} min ("
            + ", ".join(f"{k} {v:.1f}" for k, v in run["by_type"].items())
            + ")",
            flush=True,
        )
        # Written after every seed: an interrupted run keeps the seeds it finished.
        write(host, args, runs)


def write(host: dict, args: argparse.Namespace, runs: list[dict]) -> None:
    result = {
        "benchmark": "make demo's config over seeds",
        "machine": host,
        "settings": {
            "config": str(args.config.relative_to(ROOT)),
            "overrides": args.overrides,
            "seeds": args.seeds,
            "target_accuracy": TARGET_ACCURACY,
            "target_minutes": TARGET_MINUTES,
        },
        "runs": runs,
        "test_accuracy": spread([r["test_accuracy"] for r in runs]),
        "minutes": spread([r["minutes"] for r in runs]),
        "met": all(
            r["test_accuracy"] >= TARGET_ACCURACY and r["minutes"] <= TARGET_MINUTES for r in runs
        ),
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
