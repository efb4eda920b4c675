"""The quality tables of docs/results.md: seeds and real-data anchors (tools/render_results.py).

Each function takes a `Results` and returns Markdown, like results_tables' speed tables.
"""

from __future__ import annotations

from results_tables import Results, spread, table

DEMO_TYPES = ("shape", "colour", "yes/no", "negated yes/no")


def mean_std(stats: dict, fmt: str = ".2f") -> str:
    return f"{stats['mean']:{fmt}} ± {stats['std']:{fmt}}"


def seeds_cell(stats: dict, seeds: int) -> str:
    """`mean ± std (N seeds)`, or the one value of a single seed."""
    if seeds == 1:
        return f"{stats['mean']:.2f} (1 seed)"
    return f"{mean_std(stats)} ({seeds} seeds)"


def demo_summary_rows(data: dict) -> list[list[str]]:
    blank = [""] * len(DEMO_TYPES)
    n = len(data["runs"])
    return [
        [f"mean ± std, {n} seeds", mean_std(data["test_accuracy"]), *blank,
         mean_std(data["minutes"], ".1f")],
        ["median (min-max)", spread(data["test_accuracy"], ".2f"), *blank,
         spread(data["minutes"], ".1f")],
    ]  # fmt: skip


def demo_seeds(results: Results) -> str:
    """The demo config over seeds: accuracy, by question type, minutes; the target's status."""
    data = results("demo_seeds.json")
    rows = [
        [
            f"seed {r['seed']}",
            f"{r['test_accuracy']:.2f}",
            *(f"{r['by_type'].get(kind, float('nan')):.1f}" for kind in DEMO_TYPES),
            f"{r['minutes']:.1f}",
        ]
        for r in data["runs"]
    ]
    if len(data["runs"]) > 1:
        rows += demo_summary_rows(data)
    header = ["`make demo`'s config", "test accuracy %", *DEMO_TYPES, "minutes"]
    s = data["settings"]
    status = "met" if data["met"] else "**not met**"
    goal = (
        f"Target: every seed at least {s['target_accuracy']:g}% within "
        f"{s['target_minutes']:g} minutes: {status}."
    )
    return f"{table(header, rows)}\n\n{goal}"


ACLSUM_ORDER = ("zero-shot", "prompt", "residual", "prefix", "lora", "prompt+lora", "full")


def aclsum_methods(results: Results) -> str:
    """Every aclsum method's test ROUGE-L per seed, and its mean ± std."""
    data = results("aclsum_methods.json")
    runs = sorted(data["runs"], key=lambda r: r["seed"])
    methods = [m for m in ACLSUM_ORDER if m in data["test_rougeL"]]
    rows = []
    for method in methods:
        params = next(
            r["rows"][method]["trainable_parameters"] for r in runs if method in r["rows"]
        )
        per_seed = [
            f"{r['rows'][method]['test_rougeL']:.2f}" if method in r["rows"] else "-" for r in runs
        ]
        stats = data["test_rougeL"][method]
        shown = (
            mean_std(stats) if len(per_seed) - per_seed.count("-") > 1 else f"{stats['mean']:.2f}"
        )
        rows.append([method, f"{params:,}", *per_seed, shown])
    header = ["method", "trainable params", *(f"seed {r['seed']}" for r in runs), "mean ± std"]
    return table(header, rows)


FASHION_ROWS = {
    "zero_shot": "zero-shot (frozen VLM, hard prompt, 10 class words ranked)",
    "soft_prompt": "soft prompt + projection (the demo's recipe)",
    "linear_probe": "logistic regression on the same frozen features",
}


def fashion_mnist(results: Results) -> str:
    """Fashion-MNIST: zero-shot, soft prompt and linear probe; the gap to the probe."""
    data = results("fashion_mnist_anchor.json")
    rows = [
        [label, f"{data['rows'][key]['test_accuracy']:.2f}", f"{data['rows'][key]['seconds']:.0f}"]
        for key, label in FASHION_ROWS.items()
    ]
    s = data["settings"]
    header = ["Fashion-MNIST, 10 classes", "test accuracy %", "wall seconds"]
    note = (
        f"{s['train_per_class']} train and {s['test_per_class']} test images per class, "
        f"{s['steps']} steps of 16, seed {s['seed']}; gap, linear probe minus soft prompt: "
        f"{data['gap_to_linear_probe']:+.2f} points."
    )
    return f"{table(header, rows)}\n\n{note}"


def easyvqa_anchor(results: Results) -> str:
    """easy-VQA's CNN + bag-of-words baseline, every seed and the spread."""
    data = results("easyvqa_cnn_baseline.json")
    rows = [
        [
            f"seed {r['seed']}",
            f"{r['test_accuracy_first_2000']:.2f}",
            f"{r['test_accuracy_all']:.2f}",
            f"{r['train_seconds']:.0f}",
        ]
        for r in data["runs"]
    ]
    rows.append(
        [
            f"median (min-max), {len(data['runs'])} seeds",
            spread(data["test_accuracy_first_2000"], ".2f"),
            spread(data["test_accuracy_all"], ".2f"),
            spread(data["train_seconds"], ".0f"),
        ]
    )
    header = [
        "CNN + bag of words, from scratch",
        "first 2,000 test %",
        "all 9,673 test %",
        "train s",
    ]
    return table(header, rows)


def headline(results: Results) -> str:
    """The README's results: each task's soft prompt against its anchors."""
    demo, cnn = results("demo_seeds.json"), results("easyvqa_cnn_baseline.json")
    fashion = results("fashion_mnist_anchor.json")
    f_rows = fashion["rows"]
    rows = [
        [
            "easy-VQA, accuracy % (2,000 test questions)",
            seeds_cell(demo["test_accuracy"], len(demo["runs"])),
            "CNN + bag of words from scratch, median (min-max) of "
            f"{len(cnn['runs'])} seeds: {spread(cnn['test_accuracy_first_2000'], '.2f')}",
        ],
        [
            "Fashion-MNIST, accuracy %",
            f"{f_rows['soft_prompt']['test_accuracy']:.2f} (1 seed)",
            f"logistic regression on the frozen features "
            f"{f_rows['linear_probe']['test_accuracy']:.2f}; zero-shot "
            f"{f_rows['zero_shot']['test_accuracy']:.2f}",
        ],
    ]
    header = ["task", "soft prompt (ours)", "anchors, same data and test split"]
    return table(header, rows, right=len(header))


# `aclsum_methods` joins as block "aclsum-methods" once bench/aclsum_methods.py has written
# bench/results/aclsum_methods.json (every block's file must be committed).
QUALITY_TABLES = {
    "demo-seeds": (demo_seeds, ("demo_seeds.json",)),
    "fashion-mnist": (fashion_mnist, ("fashion_mnist_anchor.json",)),
    "easyvqa-anchor": (easyvqa_anchor, ("easyvqa_cnn_baseline.json",)),
    "headline": (
        headline,
        (
            "demo_seeds.json",
            "easyvqa_cnn_baseline.json",
            "fashion_mnist_anchor.json",
        ),
    ),
}
