"""`make bench` and `make bench-full`: every benchmark at its budget, one after another, timed.

    python bench/run_all.py           # the speed benchmarks (make bench, <= 15 min here)
    python bench/run_all.py --full    # and the quality runs: seeds, anchors (make bench-full)
    python bench/run_all.py --only bench_lora.py demo_seeds.py    # some of them

Each script writes its own bench/results/*.json (the files `make results` renders); this
one records how long each took in bench/results/bench_times.json, and each target's total
(make_bench, make_bench_full: the sum of its scripts' latest times) against its budget.
A script that fails stops the run with its exit status, after the times are written.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from machine import machine  # noqa: E402

OUT = HERE / "results" / "bench_times.json"
# Script -> its arguments: budgets that fit all of them within 15 minutes on 2 cores,
# each still with 2-3 rounds (or runs) for a spread. Each script's docstring gives its
# longer default run; these write the same files `make results` renders.
SPEED = {
    "bench_train.py": ["--runs", "2", "--steps", "3", "--batch-size", "4", "--warmup", "1"],
    "bench_bf16.py": ["--steps", "15", "--rounds", "2"],
    "bench_lora.py": ["--steps", "3", "--rounds", "3", "--warmup", "1"],
    "bench_lora.py --bf16": ["--bf16", "--steps", "3", "--rounds", "3", "--warmup", "1"],
    "bench_switch.py": [],
    "bench_feature_cache.py": ["--examples", "32", "--rounds", "2"],
    "bench_predict.py": ["--images", "16", "--rounds", "2"],
    "bench_generate_reuse.py": [
        "--questions",
        "100",
        "--rounds",
        "2",
        "--out",
        "generate_reuse.json",
    ],
    "bench_bank.py": ["--rounds", "2", "--steps", "3"],
    "bench_serve.py": [
        "--requests",
        "32",
        "--max-tokens",
        "8",
        "--time-cap",
        "40",
        "--out",
        "serve.json",
    ],
    "bench_coop.py": ["--rounds", "2", "--shots", "8", "--images", "200", "--naive-images", "20"],
    "fsdp_memory.py": [],
}
QUALITY = {
    "demo_seeds.py": [],
    "baseline_easyvqa.py": [],
    "anchor_fashion_mnist.py": [],
    "aclsum_methods.py": [],
}
BUDGET_MINUTES = {"make_bench": 15, "make_bench_full": 90}


def run(script: str, args: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    path = HERE / script.split()[0]  # "bench_lora.py --bf16": the same script again
    print(f"== python bench/{path.name} {' '.join(args)}", flush=True)
    status = subprocess.run([sys.executable, str(path), *args]).returncode
    return time.perf_counter() - started, status


def record_times(times: dict[str, dict]) -> dict:
    """Merge these scripts' times into bench_times.json; each target's total is the sum of
    its scripts' latest times (None until every one of them has run)."""
    record = json.loads(OUT.read_text("utf-8")) if OUT.is_file() else {}
    scripts = {**record.get("scripts", {}), **times}
    totals = {}
    for key, plan in (("make_bench", SPEED), ("make_bench_full", {**SPEED, **QUALITY})):
        done = [scripts[name] for name in plan if scripts.get(name, {}).get("status") == 0]
        minutes = sum(t["seconds"] for t in done) / 60 if len(done) == len(plan) else None
        totals[key] = {"minutes": minutes, "budget_minutes": BUDGET_MINUTES[key]}
    record = {"machine": machine(threads=os.cpu_count() or 1), "scripts": scripts, **totals}
    OUT.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also the quality runs")
    parser.add_argument("--only", nargs="+", help="just these scripts")
    args = parser.parse_args()
    everything = {**SPEED, **QUALITY}
    plan = {**SPEED, **(QUALITY if args.full else {})}
    if args.only:
        unknown = sorted(set(args.only) - set(everything))
        if unknown:
            parser.error(f"--only: unknown {', '.join(unknown)}; known: {', '.join(everything)}")
        plan = {name: everything[name] for name in args.only}
    times, status = {}, 0
    for script, script_args in plan.items():
        seconds, status = run(script, script_args)
        times[script] = {"args": script_args, "seconds": seconds, "status": status,
                         "finished": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
        if status:
            break
    for key, total in record_times(times).items():
        shown = (
            "not every script has run"
            if total["minutes"] is None
            else f"{total['minutes']:.1f} min"
        )
        print(f"{key}: {shown} (budget {total['budget_minutes']} min)")
    return status


if __name__ == "__main__":
    sys.exit(main())
