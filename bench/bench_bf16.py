"""bf16 against fp32 training throughput of a config, through `softprompt train` as users run it.

    python bench/bench_bf16.py [--config configs/easyvqa_effnet_smollm2.yaml] [--steps 50]
                               [--rounds 3] [--variants fp32 bf16 ...]

Each variant trains the config from scratch for --steps steps in its own process (the
precision is set per process), the variants alternating round after round so that
background load hits them alike. Steady state: the first logging window (10 steps: first
allocations, oneDNN kernel selection) is left out; samples/s is the rate over the others. Reported: median and min-max over rounds, the bf16/fp32 ratio per round, and the
train loss at the last step. Results: bench/results/bf16_<config>.json.

Variants: `fp32` (training.bf16=false, model.dtype=float32), `bf16` (training.bf16=true,
model.dtype=bfloat16: what the demo config runs), `bf16-autocast` (training.bf16=true,
float32 frozen weights).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from train_report import median_range, spread  # bench/ is on sys.path when run as a script

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VARIANTS = {
    "fp32": ["training.bf16=false", "model.dtype=float32"],
    "bf16": ["training.bf16=true", "model.dtype=bfloat16"],
    "bf16-autocast": ["training.bf16=true", "model.dtype=float32"],
}
WINDOW = 10  # steps per logged window


def train_once(config: str, variant: str, steps: int, workdir: Path) -> dict:
    """One `softprompt train` run; its steady-state samples/s and last train loss."""
    out = workdir / variant
    command = [
        *(sys.executable, "-m", "softprompt", "train", config),
        *VARIANTS[variant],
        f"training.output_dir={out}",
        f"training.max_steps={steps}",
        f"training.save_steps={steps}",
        f"training.logging_steps={WINDOW}",
        "training.eval_generate=false",
        "training.report_to=none",
        "data.max_eval_samples=8",
        "--no-progress",
    ]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"{variant} failed:\n{done.stderr[-3000:]}")
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in records if r["event"] == "train"]
    # samples_per_second is the rate since the start: the time to step s is s * batch / rate,
    # which gives the rate between the first and the last log (the batch cancels out).
    first, last = windows[0], windows[-1]
    time_over_batch = (
        last["step"] / last["samples_per_second"] - first["step"] / first["samples_per_second"]
    )
    return {
        "samples_per_s": (last["step"] - first["step"]) / time_over_batch,
        "rates_since_start": [round(w["samples_per_second"], 3) for w in windows],
        "last_loss": windows[-1]["loss"],
        "wall_seconds": time.perf_counter() - start,
    }


def summarize(rounds: list[dict[str, dict]], variants: list[str]) -> dict:
    summary = {
        v: {
            "samples_per_s": spread([r[v]["samples_per_s"] for r in rounds]),
            "last_loss": spread([r[v]["last_loss"] for r in rounds]),
        }
        for v in variants
    }
    ratios = {
        f"{v} / fp32": spread([r[v]["samples_per_s"] / r["fp32"]["samples_per_s"] for r in rounds])
        for v in variants
        if v != "fp32" and "fp32" in variants
    }
    return {"variants": summary, "ratios": ratios}


def report(config: str, steps: int, summary: dict) -> str:
    lines = [
        f"{config}, {steps} steps per run (first {WINDOW} left out), median (min-max):",
        "",
        "| precision | train samples/s | train loss at the last step |",
        "|---|---:|---:|",
    ]
    for v, s in summary["variants"].items():
        rate, loss = median_range(s["samples_per_s"], ".2f"), median_range(s["last_loss"], ".4f")
        lines.append(f"| {v} | {rate} | {loss} |")
    lines.append("")
    for name, r in summary["ratios"].items():
        each = ", ".join(f"{x:.2f}" for x in r["runs"])
        lines.append(f"{name}: {median_range(r, '.2f')}x (runs: {each})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/easyvqa_effnet_smollm2.yaml")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["fp32", "bf16"])
    args = parser.parse_args()
    if args.steps < 2 * WINDOW:
        parser.error(f"--steps must be at least {2 * WINDOW} (one warm-up window, one timed)")
    started = time.perf_counter()
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            order = args.variants if k % 2 == 0 else args.variants[::-1]
            result = {}
            for variant in order:
                result[variant] = train_once(args.config, variant, args.steps, Path(tmp) / str(k))
                rate = result[variant]["samples_per_s"]
                print(f"[bench] round {k + 1}: {variant} {rate:.2f} samples/s", file=sys.stderr)
            rounds.append(result)
    summary = summarize(rounds, args.variants)
    out = HERE / "results" / f"bf16_{Path(args.config).stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": args.config,
        "steps": args.steps,
        **summary,
        "rounds": rounds,
        "wall_seconds": time.perf_counter() - started,
    }
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(report(args.config, args.steps, summary))
    print(f"\n(results written to {out}; wall {results['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
