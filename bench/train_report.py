"""Summaries, loss parity and the printed report of bench_train.py (no torch needed)."""

from __future__ import annotations


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


def parity(peft: dict, ours: dict) -> dict:
    """Compare the two workers' probes (and drop the gradients from the results)."""
    a, b = peft.pop("probe"), ours.pop("probe")
    rows = [
        {"batch": k, "peft": x, "ours": y, "rel_diff": abs(y - x) / abs(x)}
        for k, (x, y) in enumerate(zip(a["losses"], b["losses"], strict=True))
    ]
    diff = sum((x - y) ** 2 for x, y in zip(a["grad"], b["grad"], strict=True)) ** 0.5
    norm = sum(x * x for x in a["grad"]) ** 0.5
    return {"batch_size": a["batch_size"], "batches": rows, "grad_rel_diff_batch0": diff / norm}


def report(results: dict) -> str:
    """The Markdown table, ratio, MFU and parity lines printed at the end of a run."""
    peak = results["matmul_flops_per_s"]
    lines = [
        "| method | samples/s | tokens/s | peak RSS MB | MFU fraction |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, key in (("HF PEFT prompt tuning", "peft"), ("softprompt (ours)", "ours")):
        r = results[key]
        lines.append(
            f"| {name} | {r['samples_per_s']:.3f} | {r['tokens_per_s']:.1f} | "
            f"{r['peak_rss']['vm_hwm_mb']:.0f} | {r['mfu']:.3f} |"
        )
    ratios = results["ratios"]
    lines += [
        "",
        f"throughput ours/PEFT: {ratios['samples_per_s']:.2f}x samples/s, "
        f"{ratios['tokens_per_s']:.2f}x tokens/s (target >= 1.5x)",
        f"peak RSS ours/PEFT: {ratios['peak_rss']:.3f} "
        f"({results['ours']['peak_rss']['vm_hwm_mb']:.0f} vs "
        f"{results['peft']['peak_rss']['vm_hwm_mb']:.0f} MiB, VmHWM)",
        "CPU utilisation (process CPU s / wall s, 2 = both cores): "
        f"ours {results['ours']['cpu_utilisation']:.2f}, "
        f"PEFT {results['peft']['cpu_utilisation']:.2f}",
        "other processes' CPU use during the counted step attempts (mean cores): "
        f"ours {results['ours']['totals']['background_cores']:.2f}, "
        f"PEFT {results['peft']['totals']['background_cores']:.2f}; steps still disturbed: "
        f"ours {results['ours']['disturbed_steps']}, PEFT {results['peft']['disturbed_steps']}",
        f"padding fraction of text positions: ours {results['ours']['padding_fraction']:.3f}, "
        f"PEFT {results['peft']['padding_fraction']:.3f}",
        f"matmul peak (fp32 torch.mm {peak['n']}x{peak['n']}, {results['threads']} threads, best "
        f"sample before/between/after training; MFU denominator): {peak['best'] / 1e9:.1f} GFLOP/s",
        f"MFU incl. attention FLOPs: ours {results['ours']['mfu_with_attention']:.3f}, "
        f"PEFT {results['peft']['mfu_with_attention']:.3f}",
        f"what counts as a FLOP: {results['flop_definition']}",
        "tokens/s counts real (non-pad) input + target tokens, prompt excluded.",
        "",
        f"loss parity (eval mode, same {results['parity']['batch_size']}-example batches, "
        "same prompt weights):",
    ]
    for row in results["parity"]["batches"]:
        lines.append(
            f"  batch {row['batch']}: PEFT {row['peft']:.6f}  ours {row['ours']:.6f}  "
            f"rel diff {row['rel_diff']:.2e} (target <= 1e-4)"
        )
    lines.append(
        f"  prompt-gradient rel diff, batch 0: {results['parity']['grad_rel_diff_batch0']:.2e}"
    )
    return "\n".join(lines)
