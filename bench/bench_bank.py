"""Many prompts in one batch: the cost of rows using 8 different prompts against the same
rows using one prompt, for a training step and for greedy generation.

    python bench/bench_bank.py [--rounds 3] [--steps 6]

Frozen SmolLM2-135M (the embedded text model), 16 easy-VQA-like rows of ~20 text tokens
(the demo's shape without the image), prompts of 11 tokens. Three batches of the same
rows are timed, interleaved, in one process:
- one prompt for every row (the shared-prefix fast path: the prompt runs once);
- 8 prompts of 11 tokens (the bank's grouped path: each prompt runs once);
- 8 prompts of 7-15 tokens (mean 11; padded, moved to the row end, nothing shared).
Prints the median of each round's ratio against one prompt, and the spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import model_path  # noqa: E402

from softprompt.backbones.base import EncodeSettings  # noqa: E402
from softprompt.backbones.loading import load_backbone  # noqa: E402
from softprompt.data.records import TextExample  # noqa: E402
from softprompt.tuners.base import PromptInput  # noqa: E402
from softprompt.tuners.prompt_tuning.bank import stack_prompts  # noqa: E402

ROWS, PROMPTS, LENGTH = 16, 8, 11
QUESTIONS = [
    "is there a red shape in the image?",
    "what shape is in the image?",
    "what color is the shape?",
    "is there not a blue circle?",
]


def rows() -> list[TextExample]:
    return [
        TextExample(id=str(i), input=f".\n{QUESTIONS[i % 4]}", target="yes") for i in range(ROWS)
    ]


def prompt_inputs(hidden: int) -> dict[str, PromptInput]:
    torch.manual_seed(0)
    ids = torch.arange(ROWS) % PROMPTS
    same = [torch.randn(LENGTH, hidden) * 0.05 for _ in range(PROMPTS)]
    mixed = [torch.randn(LENGTH - 4 + k, hidden) * 0.05 for k in range(PROMPTS)]
    return {
        "one prompt": PromptInput.single(same[0], ROWS),
        "8 prompts, one length": stack_prompts(same, ids),
        "8 prompts, 7-14 tokens": stack_prompts(mixed, ids),
    }


def train_step(backbone, batch, prompt: PromptInput) -> None:
    table = prompt.table.clone().requires_grad_(True)
    run = PromptInput(table, prompt.ids, prompt.mask)
    total, count = backbone.loss_sum(batch, run)
    (total / count).backward()


def generate(backbone, batch, prompt: PromptInput) -> None:
    with torch.no_grad():
        backbone.generate_ids(batch, prompt, 3)


def timed(fn, steps: int) -> float:
    fn()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(2)
    backbone = load_backbone(model_path())
    backbone.model.train()
    settings = EncodeSettings(max_input_length=64, max_target_length=8)
    train_batch = backbone.collate(rows(), settings, with_targets=True)
    gen_batch = backbone.collate(rows(), settings, with_targets=False)
    inputs = prompt_inputs(backbone.hidden_size)
    results: dict[str, dict[str, list[float]]] = {"train step": {}, "generation": {}}
    for _ in range(args.rounds):
        for name, prompt in inputs.items():
            t = timed(lambda p=prompt: train_step(backbone, train_batch, p), args.steps)
            results["train step"].setdefault(name, []).append(t)
            g = timed(lambda p=prompt: generate(backbone, gen_batch, p), args.steps)
            results["generation"].setdefault(name, []).append(g)
    print("| work | batch | seconds (median) | ratio vs one prompt: median (min-max) |")
    print("|---|---|---:|---:|")
    summary = {}
    for work, timings in results.items():
        base = timings["one prompt"]
        for name, values in timings.items():
            ratios = [v / b for v, b in zip(values, base, strict=True)]
            summary[f"{work}: {name}"] = {"seconds": values, "ratios": ratios}
            print(
                f"| {work} | {name} | {statistics.median(values):.3f} | "
                f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |"
            )
    out = Path(__file__).resolve().parent / "results" / "bench_bank.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(summary, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
