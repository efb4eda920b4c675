"""The aclsum method table over seeds: ROUGE-L of every method at one budget, mean +- std.

    python bench/aclsum_methods.py [--seeds 0 1 2] [--jobs 2] [key=value ...]

Each seed is one `softprompt compare configs/aclsum_smollm2.yaml training.seed=S
--methods prompt,residual,prefix,lora,prompt+lora,full` (the first seed also scores the
zero-shot hard prompt, which has nothing to seed), exactly as a user runs it, with the
budget below for every method: SmolLM2-135M, the 100 train papers, best weights by
validation loss, ROUGE-L of greedy summaries of the first test papers. `--jobs 2` runs
two seeds at a time with one torch thread each (2 cores). Learning rates: the prompt
methods 0.03 (the config), LoRA 1e-3, full fine-tuning 5e-5, as in docs/results.md.
Results: stdout and bench/results/aclsum_methods.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from machine import machine, spread  # noqa: E402

OUT = HERE / "results" / "aclsum_methods.json"
CONFIG = "configs/aclsum_smollm2.yaml"
METHODS = ("prompt", "residual", "prefix", "lora", "prompt+lora", "full")
# One epoch of the 100 train papers in 25 steps of 4: 18 runs fit in about half an hour on
# 2 cores; validation and test on the first 30 papers of each.
BUDGET = (
    "training.epochs=1",
    "training.batch_size=4",
    "training.warmup_steps=2",
    "data.max_eval_samples=30",
    "method.lora.learning_rate=0.001",
    "method.full.learning_rate=0.00005",
)


def run_compare(seed: int, methods: list[str], overrides: list[str], threads: int) -> dict:
    out = ROOT / "runs" / "bench" / "aclsum" / f"seed{seed}"
    command = [
        sys.executable, "-m", "softprompt", "compare", CONFIG, f"training.seed={seed}",
        *overrides, "--methods", ",".join(methods), "--output-dir", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    minutes = (time.perf_counter() - started) / 60
    rows = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    return {
        "seed": seed,
        "minutes": minutes,
        "rows": {
            r["method"]: {
                "test_rougeL": r["test"].get("test_rougeL"),
                "test_rouge1": r["test"].get("test_rouge1"),
                "best_step": r["best_step"],
                "trainable_parameters": r["trainable_parameters"],
                "train_samples_per_second": r["train_samples_per_second"],
            }
            for r in rows
        },
    }


def summarise(runs: list[dict]) -> dict:
    """method -> spread of its test ROUGE-L over the seeds that ran it."""
    methods = dict.fromkeys(m for run in runs for m in run["rows"])
    return {
        m: spread([run["rows"][m]["test_rougeL"] for run in runs if m in run["rows"]])
        for m in methods
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="more config overrides, key.sub=value")
    args = parser.parse_args()
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    host = machine(threads)
    overrides = [*BUDGET, *args.overrides]
    plans = [
        (seed, ["zero-shot", *METHODS] if k == 0 else list(METHODS))
        for k, seed in enumerate(args.seeds)
    ]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda p: run_compare(p[0], p[1], overrides, threads), plans))
    summary = summarise(runs)
    for method, stats in summary.items():
        print(f"{method:>12}: ROUGE-L {stats['mean']:.2f} +- {stats['std']:.2f}")
    result = {
        "benchmark": "aclsum methods over seeds",
        "machine": host,
        "settings": {"config": CONFIG, "overrides": overrides, "jobs": args.jobs},
        "runs": runs,
        "test_rougeL": summary,
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
