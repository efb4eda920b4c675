"""Markdown tables rendered from the benchmark JSON in bench/results/ (tools/render_results.py).

Each table function takes a `Results` (JSON files read on demand) and returns Markdown.
`TABLES` maps a block name (`<!-- results:NAME start -->`) to its function and source files.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path


class MissingResult(FileNotFoundError):
    """A benchmark JSON file a table needs is not there."""


class Results:
    """The JSON files of one results directory, read once each."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._cache: dict[str, dict] = {}

    def __call__(self, name: str) -> dict:
        if name not in self._cache:
            path = self.directory / name
            if not path.is_file():
                raise MissingResult(
                    f"missing benchmark result {path} (run the bench/ script that writes {name})"
                )
            self._cache[name] = json.loads(path.read_text(encoding="utf-8"))
        return self._cache[name]


def table(header: list[str], rows: list[list[str]], right: int = 1) -> str:
    """A Markdown table; every column from index `right` on is right-aligned."""
    align = ["---" if i < right else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(cells) + " |" for cells in (header, *rows)]
    return "\n".join([lines[0], "|" + "|".join(align) + "|", *lines[1:]])


def spread(stats: dict, fmt: str = ".3f") -> str:
    """`median (min-max)` of a {median, min, max} summary."""
    return f"{stats['median']:{fmt}} ({stats['min']:{fmt}}-{stats['max']:{fmt}})"


def runs(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


# ---------------------------------------------------------------- one table per JSON file
TRAIN_METHODS = {
    "peft": "PEFT prompt tuning, fp32",
    "ours": "softprompt, fp32",
    "peft-bf16": "PEFT prompt tuning, bf16 autocast",
    "ours-bf16": "softprompt, bf16",
}


def train(results: Results) -> str:
    medians = results("train_vs_peft.json")["median"]
    header = [
        "method",
        "samples/s",
        "tokens/s",
        "peak RSS (MB)",
        "useful FLOP/s / fp32 matmul peak",
        "/ bf16 matmul peak",
    ]
    rows = [
        [
            label,
            spread(m["samples_per_s"]),
            f"{m['tokens_per_s']['median']:.1f}",
            f"{m['peak_rss_mb']['median']:.0f}",
            f"{m['fraction_of_fp32_peak']['median']:.3f}",
            f"{m['fraction_of_bf16_peak']['median']:.3f}",
        ]
        for key, label in TRAIN_METHODS.items()
        if (m := medians.get(key))
    ]
    return table(header, rows)


def train_ratios(results: Results) -> str:
    ratios = results("train_vs_peft.json")["ratios"]
    rows = [[name, f"{r['median']:.2f}x", runs(r["runs"])] for name, r in ratios.items()]
    return table(["ratio of samples/s", "median", "runs"], rows, right=1)


def bf16(results: Results) -> str:
    data = results("bf16_easyvqa_effnet_smollm2.json")
    labels = {"fp32": "fp32 (`training.bf16=false model.dtype=float32`)",
              "bf16": "bf16 (`training.bf16=true model.dtype=bfloat16`)"}  # fmt: skip
    rows = [
        [
            labels.get(name, name),
            spread(v["samples_per_s"], ".2f"),
            f"{v['last_loss']['median']:.4f}",
        ]
        for name, v in data["variants"].items()
    ]
    ratios = "; ".join(
        f"{k}: {r['median']:.2f}x (rounds: {runs(r['runs'])})" for k, r in data["ratios"].items()
    )
    header = ["precision", "train samples/s", f"train loss at step {data['steps']}"]
    return table(header, rows) + f"\n\n{ratios}"


LORA_FILES = {"fp32": "lora_vs_peft.json", "bf16": "lora_vs_peft_bf16.json"}


def lora(results: Results) -> str:
    """LoRA step speed, ours vs PEFT, in fp32 and in bf16 (each file's own rounds)."""
    rows = []
    for precision, name in LORA_FILES.items():
        data = results(name)
        s, ratio = data["samples_per_s"], data["ratio_samples_per_s"]
        rows += [
            [
                f"PEFT LoRA, plain loop, {precision}",
                f"{s['peft']['median']:.3f}",
                f"{s['peft']['min']:.3f}-{s['peft']['max']:.3f}",
                "1.00",
            ],
            [
                f"softprompt LoRA, {precision}",
                f"{s['ours']['median']:.3f}",
                f"{s['ours']['min']:.3f}-{s['ours']['max']:.3f}",
                f"{ratio['median']:.2f}x (rounds: {runs(data['ratio_per_round'])})",
            ],
        ]
    return table(["path", "samples/s (median)", "spread (min-max)", "ratio ours/PEFT"], rows)


def switch(results: Results) -> str:
    data = results("switch.json")
    rows = [
        ["reload the model with the other adapters", f"{data['reload_s_median']:.3f}"],
        ["hot switch (set_adapters)", f"{data['switch_s_median']:.5f}"],
    ]
    return table(["path", "seconds (median)"], rows) + f"\n\nreload / switch: {data['ratio']:.0f}x"


def predict(results: Results) -> str:
    data = results("predict.json")
    rows = [
        [
            label,
            str(data["images"]),
            f"{p['seconds']:.2f}",
            f"{p['images_per_s']:.2f}",
            f"{p['cpu_seconds']:.2f}",
            f"{p['background_cores']:.2f}",
        ]
        for label, p in (
            ("batched LoadedModel.predict (bs 16)", data["batched"]),
            ("naive loop", data["naive"]),
        )
    ]
    header = ["path", "images", "best s", "images/s", "CPU s", "other processes (cores)"]
    return table(header, rows) + (
        f"\n\nbatched / naive throughput: {data['ratio']:.2f}x; median over rounds "
        f"{data['ratio_median']:.2f}x; prediction agreement: {data['agreement']:.1%} "
        f"({data['agree']}/{data['images']})"
    )


def feature_cache(results: Results) -> str:
    header = [
        "model",
        "examples",
        "steps/epoch",
        "epoch 1 memory (fill) s",
        "epoch 1 off s",
        "epoch 2+ off s",
        "epoch 2+ memory s",
        "off/memory",
        "frozen vision share (cached)",
    ]
    rows = [
        [
            r["model"],
            str(r["examples"]),
            str(r["steps_per_epoch"]),
            f"{r['epoch1_memory_s']:.2f}",
            f"{r['epoch1_off_s']:.2f}",
            f"{r['epoch2_off_s']:.2f}",
            f"{r['epoch2_memory_s']:.2f}",
            f"{r['ratio']:.2f}x",
            f"{r['frozen_share_memory']:.2%}",
        ]
        for r in results("feature_cache.json")["results"]
    ]
    return table(header, rows)


GENERATE_REUSE = ("generate_reuse.json",)


def generate_reuse(results: Results) -> str:
    header = [
        "torch threads",
        "rounds",
        "questions",
        "plain s",
        "once per call s",
        "kept s",
        "kept / plain speed-up",
        "other processes (cores)",
    ]
    rows = []
    for name in GENERATE_REUSE:
        d = results(name)
        rows.append(
            [
                str(d["settings"]["threads"]),
                str(len(d["rounds"]["plain"])),
                f"{d['questions']:,}",
                f"{d['plain']['seconds']:.2f}",
                f"{d['per call']['seconds']:.2f}",
                f"{d['kept']['seconds']:.2f}",
                f"{d['plain']['seconds'] / d['kept']['seconds']:.2f}x",
                f"{d['kept']['background_cores']:.2f}",
            ]
        )
    return table(header, rows)


def bank(results: Results) -> str:
    rows = []
    for name, v in results("bench_bank.json").items():
        work, batch = name.split(": ", 1)
        r = v["ratios"]
        ratio = f"{statistics.median(r):.2f}x" + (
            "" if min(r) == max(r) else f" ({min(r):.2f}-{max(r):.2f})"
        )
        rows.append([work, batch, f"{statistics.median(v['seconds']):.3f}", ratio])
    return table(["work", "batch", "seconds", "ratio vs one prompt"], rows, right=2)


def _serve_row(label: str, r: dict) -> list[str]:
    tokens = f"{r['tokens_per_s']:.1f}" if "tokens_per_s" in r else "-"
    ttft = [f"{r[k]:.0f}" if k in r else "-" for k in ("ttft_p50_ms", "ttft_p99_ms")]
    return [
        label,
        str(r["prompts"]),
        str(r["clients"]),
        str(r["requests"]),
        f"{r['requests_per_s']:.2f}",
        tokens,
        f"{r['latency_p50_ms']:.0f}",
        f"{r['latency_p99_ms']:.0f}",
        *ttft,
        f"{r['background_cores']:.2f}",
    ]


def serve(results: Results) -> str:
    data = results("serve.json")
    server = data["server"]
    # A level's TTFT comes from its streamed pass (a quarter as many requests).
    rows = [
        _serve_row("server", {**lv["streamed"], **lv["plain"]}) for lv in server["levels"].values()
    ]
    rows += [
        _serve_row("server, one prompt", server["one_prompt"]),
        _serve_row("PEFT, one lock", data["peft"]),
        _serve_row("server, stream, prompt cache on", server["ttft_cache_on"]),
        _serve_row("server, stream, prompt cache off", server["ttft_cache_off"]),
    ]
    header = [
        "engine",
        "prompts",
        "clients",
        "requests",
        "req/s",
        "tokens/s",
        "p50 ms",
        "p99 ms",
        "p50 TTFT ms",
        "p99 TTFT ms",
        "other processes (cores)",
    ]
    return table(header, rows)


def coop(results: Results) -> str:
    tr = results("coop.json")["train"]
    rows = []
    for mode, epoch in tr["warm_epoch_s"].items():
        phases = tr["warm_phases_s"][mode]
        ratio = epoch["median"] / tr["warm_epoch_s"]["cached"]["median"]
        rows.append(
            [
                mode,
                str(tr["prompt_length"][mode]),
                spread(epoch, ".2f"),
                f"{phases['tower_s']:.2f}",
                f"{phases['text_forward_s']:.2f}",
                f"{phases['backward_step_s']:.2f}",
                f"{ratio:.2f}x",
            ]
        )
    header = [
        "mode",
        "prompt tokens",
        "warm epoch s (median, min-max)",
        "image tower s",
        "text fwd s",
        "bwd + step s",
        "vs cached",
    ]
    return table(header, rows)


def fsdp(results: Results) -> str:
    rows = [
        [
            r["method"],
            str(r["processes"]),
            f"{r['trainable_parameters']:,}",
            f"{r['held_by_process_0']['trainable_parameters']:,}",
            f"{r['gib_per_process']:.1f}",
        ]
        for r in results("fsdp_memory.json")["rows"]
    ]
    header = ["method", "processes", "trained parameters", "held by a process", "GiB per process"]
    return table(header, rows, right=1)


Renderer = Callable[[Results], str]
TABLES: dict[str, tuple[Renderer, tuple[str, ...]]] = {
    "train": (train, ("train_vs_peft.json",)),
    "train-ratios": (train_ratios, ("train_vs_peft.json",)),
    "bf16": (bf16, ("bf16_easyvqa_effnet_smollm2.json",)),
    "lora": (lora, tuple(LORA_FILES.values())),
    "switch": (switch, ("switch.json",)),
    "predict": (predict, ("predict.json",)),
    "feature-cache": (feature_cache, ("feature_cache.json",)),
    "generate-reuse": (generate_reuse, GENERATE_REUSE),
    "bank": (bank, ("bench_bank.json",)),
    "serve": (serve, ("serve.json",)),
    "coop": (coop, ("coop.json",)),
    "fsdp-memory": (fsdp, ("fsdp_memory.json",)),
}
