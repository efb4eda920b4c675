"""Summaries, loss parity and the printed report of bench_train.py (no torch needed)."""

from __future__ import annotations

import statistics


def summarize(records: list[dict], num_virtual_tokens: int, busy_limit: float) -> dict:
    """Throughput, padding, CPU use and FLOP rates over a worker's timed steps."""
    total = {k: sum(r[k] for r in records) for k in records[0] if k != "loss"}
    total["background_cores"] /= len(records)  # mean over the counted attempts
    secs = total["seconds"]
    text_positions = total["positions"] - num_virtual_tokens * total["samples"]
    return {
        "steps": len(records),
        "totals": total,
        "samples_per_s": total["samples"] / secs,
        "tokens_per_s": total["tokens"] / secs,
        "positions_per_s": total["positions"] / secs,
        "padding_fraction": 1 - total["tokens"] / text_positions,
        "cpu_utilisation": total["cpu_seconds"] / secs,
        "achieved_flops_per_s": total["flops"] / secs,
        "achieved_flops_per_s_with_attention": (total["flops"] + total["attention_flops"]) / secs,
        "step_seconds": [round(r["seconds"], 3) for r in records],
        "step_attempts": [r["attempts"] for r in records],
        "step_background_cores": [round(r["background_cores"], 2) for r in records],
        "disturbed_steps": sum(r["background_cores"] >= busy_limit for r in records),
        "losses": [round(r["loss"], 4) for r in records],
    }


def parity(a: dict, b: dict) -> dict:
    """Compare two workers' probes: eval-mode losses on the same batches and the prompt
    gradient on the first (a is the reference)."""
    rows = [
        {"batch": k, "a": x, "b": y, "rel_diff": abs(y - x) / abs(x)}
        for k, (x, y) in enumerate(zip(a["losses"], b["losses"], strict=True))
    ]
    diff = sum((x - y) ** 2 for x, y in zip(a["grad"], b["grad"], strict=True)) ** 0.5
    norm = sum(x * x for x in a["grad"]) ** 0.5
    return {"batch_size": a["batch_size"], "batches": rows, "grad_rel_diff_batch0": diff / norm}


# (name in the report, numerator, denominator) of the samples/s ratios
RATIOS = (
    ("ours / PEFT, fp32", "ours", "peft"),
    ("ours bf16 / ours fp32", "ours-bf16", "ours"),
    ("PEFT bf16 / PEFT fp32", "peft-bf16", "peft"),
    ("ours bf16 / PEFT bf16", "ours-bf16", "peft-bf16"),
    ("ours bf16 / PEFT fp32", "ours-bf16", "peft"),
)
PARITIES = (("peft", "ours"), ("ours", "ours-bf16"))  # fp32 pair; bf16 against fp32


def score_run(trained: dict[str, dict], mm_before: dict, mm_after: dict) -> dict:
    """One run's rates as fractions of the best matmul peaks seen in it, its ratios and
    parities (the probes are dropped from the results)."""
    peaks = {}
    for dtype in ("fp32", "bf16"):
        between = [rates[dtype] for r in trained.values() for rates in r["matmul_rates"]]
        # The best rate seen in the run (standalone before and after training, and between
        # training steps) is the one least disturbed by other processes.
        peaks[dtype] = max(mm_before[dtype]["best"], mm_after[dtype]["best"], *between)
    probes = {m: r.pop("probe") for m, r in trained.items()}
    for r in trained.values():
        r.pop("matmul_rates")
        for dtype, peak in peaks.items():
            r[f"fraction_of_{dtype}_peak"] = r["achieved_flops_per_s"] / peak
            r[f"fraction_of_{dtype}_peak_with_attention"] = (
                r["achieved_flops_per_s_with_attention"] / peak
            )
    ratios = {
        name: trained[a]["samples_per_s"] / trained[b]["samples_per_s"]
        for name, a, b in RATIOS
        if a in trained and b in trained
    }
    return {
        "matmul_peaks": peaks,
        "matmul_standalone": {"before": mm_before, "after": mm_after},
        "methods": trained,
        "ratios": ratios,
        "parity": {
            f"{a} vs {b}": parity(probes[a], probes[b])
            for a, b in PARITIES
            if a in probes and b in probes
        },
    }


def spread(values: list[float]) -> dict:
    """Median, min, max and the values themselves (one per run)."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": values,
    }


METHOD_RATES = (
    "samples_per_s",
    "tokens_per_s",
    "achieved_flops_per_s",
    "fraction_of_fp32_peak",
    "fraction_of_bf16_peak",
    "cpu_utilisation",
)


def aggregate(runs: list[dict]) -> dict:
    """Median and min-max over runs of every method's rates, the peaks and the ratios."""
    methods = runs[0]["methods"]
    return {
        "matmul_peaks": {d: spread([r["matmul_peaks"][d] for r in runs]) for d in ("fp32", "bf16")},
        "median": {
            m: {
                **{k: spread([r["methods"][m][k] for r in runs]) for k in METHOD_RATES},
                "peak_rss_mb": spread([r["methods"][m]["peak_rss"]["vm_hwm_mb"] for r in runs]),
                "padding_fraction": methods[m]["padding_fraction"],
                "disturbed_steps": sum(r["methods"][m]["disturbed_steps"] for r in runs),
                "background_cores": spread(
                    [r["methods"][m]["totals"]["background_cores"] for r in runs]
                ),
            }
            for m in methods
        },
        "ratios": {k: spread([r["ratios"][k] for r in runs]) for k in runs[0]["ratios"]},
        "parity": runs[0]["parity"],  # the probes are deterministic: every run gives the same
    }


NAMES = {
    "peft": "HF PEFT prompt tuning, fp32",
    "ours": "softprompt, fp32",
    "peft-bf16": "HF PEFT prompt tuning, bf16 autocast",
    "ours-bf16": "softprompt, bf16",
}


def median_range(s: dict, fmt: str) -> str:
    """A spread as 'median (min-max)'."""
    return f"{s['median']:{fmt}} ({s['min']:{fmt}}-{s['max']:{fmt}})"


def report(results: dict) -> str:
    """The Markdown table, ratios, peaks and parity lines printed at the end of a run."""
    runs = len(results["runs"])
    lines = [
        f"median (min-max) over {runs} run(s):",
        "",
        "| method | samples/s | tokens/s | peak RSS MB | useful FLOP/s of fp32 peak "
        "| of bf16 peak |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m, r in results["median"].items():
        lines.append(
            f"| {NAMES[m]} | {median_range(r['samples_per_s'], '.3f')} | "
            f"{r['tokens_per_s']['median']:.1f} | {r['peak_rss_mb']['median']:.0f} | "
            f"{median_range(r['fraction_of_fp32_peak'], '.3f')} | "
            f"{median_range(r['fraction_of_bf16_peak'], '.3f')} |"
        )
    lines.append("")
    for name, s in results["ratios"].items():
        each = ", ".join(f"{x:.2f}" for x in s["runs"])
        lines.append(f"samples/s {name}: {median_range(s, '.2f')}x (runs: {each})")
    peaks = results["matmul_peaks"]
    lines += [
        f"matmul peaks (torch.mm 2048x2048, {results['threads']} threads, best sample of each "
        f"run): fp32 {peaks['fp32']['median'] / 1e9:.0f} GFLOP/s, bf16 "
        f"{peaks['bf16']['median'] / 1e9:.0f} GFLOP/s (bf16/fp32 "
        f"{peaks['bf16']['median'] / peaks['fp32']['median']:.1f}x)",
        "padding fraction of text positions: "
        + ", ".join(f"{m} {r['padding_fraction']:.3f}" for m, r in results["median"].items()),
        "other processes' CPU use during counted steps (mean cores, median run): "
        + ", ".join(
            f"{m} {r['background_cores']['median']:.2f}" for m, r in results["median"].items()
        )
        + "; steps still disturbed after re-runs: "
        + ", ".join(f"{m} {r['disturbed_steps']}" for m, r in results["median"].items()),
        f"what counts as a FLOP: {results['flop_definition']}",
        "tokens/s counts real (non-pad) input + target tokens, prompt excluded.",
    ]
    for pair, p in results["parity"].items():
        lines += ["", f"loss {pair} (eval mode, same {p['batch_size']}-example batches, same "
                  "initial prompt; relative differences):"]  # fmt: skip
        for row in p["batches"]:
            lines.append(
                f"  batch {row['batch']}: {row['a']:.6f} vs {row['b']:.6f}, {row['rel_diff']:.2e}"
            )
        lines.append(f"  prompt gradient, batch 0: {p['grad_rel_diff_batch0']:.2e}")
    return "\n".join(lines)
