"""Evaluation with generation from the soft prompt's cached keys and values, against
recomputing the prompt in every row.

    python bench/bench_generate_reuse.py [--questions 2000] [--rounds 2] [--threads 2]

The embedded VLM of `make demo` (configs/easyvqa_effnet_smollm2.yaml: EfficientNet-Lite0 ->
MLP projection -> SmolLM2-135M) with the config's untrained prompt (11 tokens initialised
from its text, in front of the image) answers the first N easy-VQA test questions through
`evaluate` (greedy, 3 new tokens, batches of the config's eval_batch_size) three ways:
  * plain: every row recomputes the prompt (`prompt_kv.enabled = False`, as before reuse);
  * per call: the prompt's keys and values computed once per `generate` call;
  * kept: computed once and kept across batches (the default).
Image features are computed in an untimed pass first, so every timed run reads the same
memory cache. Rounds rotate the order of the three ways. The predictions of all ways must
be identical (asserted). Prints the best round's seconds per way, ratios against plain, and
the CPU use of other processes during the timed runs (the machine may be shared). Results:
stdout and bench/results/generate_reuse.json (other settings: generate_reuse_N[_Tthreads].json).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

from softprompt.backbones.from_config import backbone_from_config, encode_settings  # noqa: E402
from softprompt.config.run import load_config  # noqa: E402
from softprompt.data.splits import load_split  # noqa: E402
from softprompt.inference.evaluate import evaluate  # noqa: E402
from softprompt.tasks.kinds import task_from_config  # noqa: E402
from softprompt.tuners.tuner_set import TunerSet  # noqa: E402

CONFIG = HERE.parent / "configs" / "easyvqa_effnet_smollm2.yaml"
THREADS = 2
WAYS = ("plain", "per call", "kept")


def load(questions: int):
    """Backbone, tuners (the config's untrained prompt), task, settings, examples."""
    config = load_config(CONFIG, [f"data.max_eval_samples={questions}"])
    torch.manual_seed(config.training.seed)  # the projection's initialisation
    backbone = backbone_from_config(config)
    tuners = TunerSet.from_config(config, backbone)
    examples = load_split(config, "test")
    return config, backbone, tuners, task_from_config(config), encode_settings(config), examples


def run(way: str, backbone, tuners, task, settings, examples, batch_size: int):
    """Predictions (id -> text) and timing of one evaluation pass."""
    cache = backbone.lm.prompt_kv
    cache.clear()
    cache.hits = cache.misses = 0
    cache.enabled, cache.keep = way != "plain", way == "kept"
    busy, cpu, wall = common.machine_busy_seconds(), time.process_time(), time.perf_counter()
    _, records = evaluate(
        backbone, tuners.prompt_input, examples, task, settings,
        batch_size=batch_size, predict=True, with_loss=False,
    )  # fmt: skip
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    other = max(0.0, common.machine_busy_seconds() - busy - cpu)
    stats = {"seconds": wall, "cpu_seconds": cpu, "background_cores": other / wall}
    stats.update(prompt_kv_misses=cache.misses, prompt_kv_hits=cache.hits)
    return [r["prediction"] for r in records], stats


def report(result: dict) -> str:
    plain = result["plain"]["seconds"]
    lines = [
        "| generation | questions | best s | questions/s | speed-up | other processes (cores) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for way in WAYS:
        x = result[way]
        lines.append(
            f"| {way} | {result['questions']} | {x['seconds']:.2f} | "
            f"{result['questions'] / x['seconds']:.1f} | {plain / x['seconds']:.2f}x | "
            f"{x['background_cores']:.2f} |"
        )
    lines.append(f"predictions identical in every run: {result['identical']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=2000, help="easy-VQA test questions")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=THREADS, help="torch CPU threads")
    parser.add_argument("--out", help="results file name (default: from the settings)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("softprompt").setLevel(logging.WARNING)
    config, backbone, tuners, task, settings, examples = load(args.questions)
    batch_size = config.training.eval_batch_size
    # Untimed: fills the image feature cache and warms every code path up.
    run("kept", backbone, tuners, task, settings, examples, batch_size)
    runs: dict[str, list[dict]] = {way: [] for way in WAYS}
    outputs: dict[str, list[list[str]]] = {way: [] for way in WAYS}
    for r in range(args.rounds):
        for way in WAYS[r % 3 :] + WAYS[: r % 3]:
            predictions, stats = run(way, backbone, tuners, task, settings, examples, batch_size)
            runs[way].append(stats)
            outputs[way].append(predictions)
            print(f"  round {r + 1} {way}: {stats['seconds']:.2f} s", flush=True)
    reference = outputs["plain"][0]
    identical = all(p == reference for way in WAYS for p in outputs[way])
    result: dict = {"questions": len(examples), "rounds": runs, "identical": identical}
    for way in WAYS:
        result[way] = min(runs[way], key=lambda x: x["seconds"])
    text = report(result)
    print(text)
    name = "generate_reuse"
    name += "" if args.questions == 2000 else f"_{args.questions}"
    name += "" if args.threads == THREADS else f"_{args.threads}threads"
    out = HERE / "results" / (args.out or f"{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    settings_record = {
        "threads": args.threads,
        "batch_size": batch_size,
        "torch": torch.__version__,
    }
    out.write_text(json.dumps({"settings": settings_record, **result, "table": text}, indent=2))
    print(f"wrote {out}")
    assert identical, "generation with reuse changed a prediction"


if __name__ == "__main__":
    main()
