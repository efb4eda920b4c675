"""The "Speed targets" table: one row per target the benchmark results carry.

Each `Target` names what is compared, the JSON file, how to read the measured ratio (and its
spread over runs/rounds where the file has several) and the target. Only coop.json records its
target (`settings.target`); every other target below is the one its bench script prints or
states in its docstring, or, where the script states none, the one the docs state (each says
which in a comment). Comparisons without any stated target are listed with "none stated".
"""

from __future__ import annotations

import operator
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from results_tables import Results, table

# (measured, lowest, highest); lowest/highest are None where the file records one value only.
Measured = tuple[float, float | None, float | None]
OPS = {">=": operator.ge, "<=": operator.le, "<": operator.lt}


@dataclass(frozen=True)
class Target:
    what: str
    source: str
    measure: Callable[[dict], Measured]
    op: str | None = None  # None: no target stated anywhere
    value: float | Callable[[dict], float] | None = None
    unit: str = "x"  # "x" (ratio), "%" (share), " min" or "" (plain number)


def _stats(s: dict) -> Measured:
    return s["median"], s["min"], s["max"]


def _of(values: list[float]) -> Measured:
    return statistics.median(values), min(values), max(values)


def _predict(d: dict) -> Measured:
    per_round = [
        n["seconds"] / b["seconds"]
        for b, n in zip(d["rounds"]["batched"], d["rounds"]["naive"], strict=True)
    ]
    return (
        d["ratio"],
        min(per_round),
        max(per_round),
    )  # the script's headline: best round of each path


def _reuse(d: dict) -> Measured:
    per_round = [
        p["seconds"] / k["seconds"]
        for p, k in zip(d["rounds"]["plain"], d["rounds"]["kept"], strict=True)
    ]
    spread = (min(per_round), max(per_round)) if len(per_round) > 1 else (None, None)
    return (d["plain"]["seconds"] / d["kept"]["seconds"], *spread)


def _bank(key: str) -> Callable[[dict], Measured]:
    return lambda d: _of(d[key]["ratios"])


def _frozen_share(model: str) -> Callable[[dict], Measured]:
    def measure(d: dict) -> Measured:
        (row,) = [r for r in d["results"] if r["model"] == model]
        return 100 * row["frozen_share_memory"], None, None

    return measure


def _serve(key: str) -> Callable[[dict], Measured]:
    return lambda d: (d["ratios"][key], None, None)


# Targets of bench_serve.py: its docstring and report ("target >= 0.9x", ">= 4x", "< 1", "at most 5% more").
# Bank: bench_bank.py states none; docs/many-prompts.md reads its result against "within 1.15x".
# LoRA: bench_lora.py states none; docs/benchmarks.md: "Below the 1.3x we aimed for".
# Feature cache: bench_feature_cache.py's report prints "(target < 2%)" for the cached frozen share.
# Predict: bench_predict.py's report prints "(target >= 3x)".
TARGETS = (
    Target("prompt-tuning step / PEFT prompt tuning, fp32, samples/s", "train_vs_peft.json",
           lambda d: _stats(d["ratios"]["ours / PEFT, fp32"])),
    Target("prompt-tuning step bf16 / fp32 (ours), samples/s", "train_vs_peft.json",
           lambda d: _stats(d["ratios"]["ours bf16 / ours fp32"])),
    Target("`softprompt train` bf16 / fp32, demo config, samples/s", "bf16_easyvqa_effnet_smollm2.json",
           lambda d: _stats(d["ratios"]["bf16 / fp32"])),
    Target("prompt-tuning step fp32 (ours), useful FLOP/s / fp32 matmul peak", "train_vs_peft.json",
           lambda d: _stats(d["median"]["ours"]["fraction_of_fp32_peak"]), unit=""),
    Target("prompt-tuning step bf16 (ours), useful FLOP/s / bf16 matmul peak", "train_vs_peft.json",
           lambda d: _stats(d["median"]["ours-bf16"]["fraction_of_bf16_peak"]), unit=""),
    Target("LoRA step / PEFT LoRA, fp32, samples/s", "lora_vs_peft.json",
           lambda d: _stats(d["ratio_samples_per_s"]), ">=", 1.3),
    Target("LoRA step / PEFT LoRA, bf16, samples/s", "lora_vs_peft_bf16.json",
           lambda d: _stats(d["ratio_samples_per_s"]), ">=", 1.3),
    Target("hot adapter switch vs reload, reload s / switch s", "switch.json",
           lambda d: (d["ratio"], None, None)),
    Target("frozen vision share of a cached epoch, effnet-smollm2", "feature_cache.json",
           _frozen_share("effnet-smollm2"), "<", 2.0, "%"),
    Target("frozen vision share of a cached epoch, instructblip-opt", "feature_cache.json",
           _frozen_share("instructblip-opt"), "<", 2.0, "%"),
    Target("batched predict / per-image loop, images/s", "predict.json", _predict, ">=", 3.0),
    Target("generation from kept prompt KV / prompt in every row, 2,000 questions", "generate_reuse.json",
           _reuse),
    Target("train step, 8 prompts of one length / one prompt, seconds", "bench_bank.json",
           _bank("train step: 8 prompts, one length"), "<=", 1.15),
    Target("train step, 8 prompts of 7-14 tokens / one prompt, seconds", "bench_bank.json",
           _bank("train step: 8 prompts, 7-14 tokens"), "<=", 1.15),
    Target("generation, 8 prompts of one length / one prompt, seconds", "bench_bank.json",
           _bank("generation: 8 prompts, one length"), "<=", 1.15),
    Target("generation, 8 prompts of 7-14 tokens / one prompt, seconds", "bench_bank.json",
           _bank("generation: 8 prompts, 7-14 tokens"), "<=", 1.15),
    Target("server: 8 prompts interleaved / one prompt, tokens/s at 16 clients", "serve.json",
           _serve("interleaved_vs_one_prompt"), ">=", 0.9),
    Target("server / PEFT one request at a time, tokens/s at 16 clients", "serve.json",
           _serve("server_vs_peft"), ">=", 4.0),
    Target("server: p50 time to first token, prompt cache on / off", "serve.json",
           _serve("ttft_cache_on_vs_off"), "<", 1.0, ""),
    Target("server: RSS with 100 prompts / 1 prompt, loaded", "serve.json", _serve("rss_loaded"), "<=", 1.05),
    Target("server: RSS with 100 prompts / 1 prompt, after one request each", "serve.json",
           _serve("rss_served"), "<=", 1.05),
    Target("CoOp: re-encoding images / cached features, warm epoch s", "coop.json",
           lambda d: (d["train"]["ratio_reencode_vs_cached"], *_of(d["train"]["ratio_per_round"])[1:]),
           ">=", lambda d: d["settings"]["target"]),
    Target("`make bench`: minutes, sum of its scripts' last timed runs", "bench_times.json",
           lambda d: (d["make_bench"]["minutes"], None, None), "<=", 15, " min"),
    Target("`make bench-full`: minutes, sum of its scripts' last timed runs", "bench_times.json",
           lambda d: (d["make_bench_full"]["minutes"], None, None), "<=", 90, " min"),
)  # fmt: skip
SOURCES = tuple(dict.fromkeys(t.source for t in TARGETS))


def _number(value: float, unit: str) -> str:
    return f"{value:.2f}%" if unit == "%" else f"{value:.2f}{unit}"


def target_row(t: Target, data: dict) -> list[str]:
    value, lo, hi = t.measure(data)
    if value is None:  # e.g. a make target whose scripts have not all run
        return [t.what, "-", "-", f"{t.op} {t.value:g}{t.unit}", "not measured"]
    spread = "-" if lo is None else f"{_number(lo, t.unit)}-{_number(hi, t.unit)}"
    if t.op is None:
        return [t.what, _number(value, t.unit), spread, "none stated", "-"]
    goal = t.value(data) if callable(t.value) else t.value
    met = "met" if OPS[t.op](value, goal) else "**not met**"
    return [t.what, _number(value, t.unit), spread, f"{t.op} {goal:g}{t.unit}", met]


def targets(results: Results) -> str:
    rows = []
    for t in TARGETS:
        what, *rest = target_row(t, results(t.source))
        rows.append([what, f"`{t.source}`", *rest])
    title = (
        "**Speed targets** (measured: median ratio, or the bench's headline figure; "
        "spread over runs/rounds):"
    )
    header = ["comparison", "source", "measured", "spread (min-max)", "target", "status"]
    return f"{title}\n\n{table(header, rows, right=2)}"
