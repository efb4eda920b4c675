"""Folder prediction on the embedded VLM: batched LoadedModel.predict vs a per-image loop.

    python bench/bench_predict.py [--images 48] [--rounds 2] [--quick]

A prompt directory comes from a 1-step training run (configs/easyvqa_effnet_smollm2.yaml,
max_steps=1, 16 train questions) into a temp dir; both paths load RUN/best through
`LoadedModel.from_bundle`. Inputs: easy-VQA test images, one question each.
  * batched: `LoadedModel.predict(examples, batch_size=16)` with feature_cache="memory",
    starting from an empty cache (a fresh folder: every image is encoded once, 32 a forward).
  * naive (as the seed-000 inference script): for each image, load it, preprocess, run the
    frozen encoder and the projection (feature_cache="off") and generate with batch size 1
    (`backbone.generate` on a one-row batch does exactly these steps).
Rounds alternate the order of the two paths; each timed run first waits for a quiet machine
(--max-wait s) and records the CPU use of other processes. Reports images/s (best round), the
ratio, and how often the two paths' predictions agree. Results: stdout and
bench/results/predict.json (--quick: predict_quick.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

from softprompt.backbones.feature_cache import FeatureCache  # noqa: E402
from softprompt.config.run import load_config  # noqa: E402
from softprompt.data.records import VisionExample  # noqa: E402
from softprompt.data.vision import load_vision_examples  # noqa: E402
from softprompt.inference.loaded import LoadedModel  # noqa: E402
from softprompt.train.loop import train  # noqa: E402

THREADS, BATCH = 2, 16
CONFIG = HERE.parent / "configs" / "easyvqa_effnet_smollm2.yaml"


def make_prompt_dir(tmp: Path) -> Path:
    """RUN/best of a 1-step training run (untrained prompt; projection and metadata as saved)."""
    overrides = [
        f"training.output_dir={tmp / 'run'}",
        "training.max_steps=1",
        "training.batch_size=16",
        "data.max_train_samples=16",
        "data.max_eval_samples=16",
    ]
    train(load_config(CONFIG, overrides))
    return tmp / "run" / "best"


def test_examples(n: int, skip: int = 0) -> list[VisionExample]:
    """One question per easy-VQA test image, images `skip`..`skip + n`."""
    first: dict[str, VisionExample] = {}
    for e in load_vision_examples("builtin:easy-vqa", task_type="vqa", split="test")[0]:
        first.setdefault(e.image_path, e)
    return [replace(e, target=None, references=[]) for e in list(first.values())[skip : skip + n]]


def wait_quiet(max_wait: float, probe: float = 0.25) -> None:
    """Sleep until other processes use under common.BUSY_LIMIT cores (at most `max_wait` s)."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_wait:
        busy, cpu = common.machine_busy_seconds(), time.process_time()
        time.sleep(probe)
        other = common.machine_busy_seconds() - busy - (time.process_time() - cpu)
        if other < common.BUSY_LIMIT * probe:
            return


def timed(fn, max_wait: float) -> tuple[dict[str, str], dict]:
    wait_quiet(max_wait)
    busy, wall, cpu = common.machine_busy_seconds(), time.perf_counter(), time.process_time()
    predictions = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    other = max(0.0, common.machine_busy_seconds() - busy - cpu)
    return predictions, {"seconds": wall, "cpu_seconds": cpu, "background_cores": other / wall}


def batched(pred: LoadedModel, examples: list[VisionExample]) -> dict[str, str]:
    bb = pred.backbone
    bb.cache = FeatureCache(bb.cache.namespace, max_items=bb.cache.max_items)  # a cold cache
    return {r["id"]: r["prediction"] for r in pred.predict(examples, batch_size=BATCH)}


@torch.no_grad()
def naive(pred: LoadedModel, examples: list[VisionExample]) -> dict[str, str]:
    bb, task = pred.backbone, pred.task
    bb.model.eval()
    prompt = pred.tuners.prompt_input(1)
    out = {}
    for example in examples:  # load + preprocess + encode + project + generate, one image
        batch = bb.collate(task.prepare([example]), pred.settings, with_targets=False)
        out[example.id] = bb.generate(batch, prompt, task.max_new_tokens)[0]
    return out


def report(r: dict) -> str:
    b, n = r["batched"], r["naive"]
    lines = [
        "| path | images | best s | images/s | CPU s | other processes (cores) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, x in ((f"batched LoadedModel.predict (bs {BATCH})", b), ("naive loop", n)):
        lines.append(
            f"| {name} | {r['images']} | {x['seconds']:.2f} | {x['images_per_s']:.2f} | "
            f"{x['cpu_seconds']:.2f} | {x['background_cores']:.2f} |"
        )
    lines += [
        "",
        f"batched / naive throughput: {r['ratio']:.2f}x (target >= 3x); median over rounds "
        f"{r['ratio_median']:.2f}x",
        f"prediction agreement: {r['agreement']:.1%} ({r['agree']}/{r['images']} identical "
        f"strings); batched cache after a run: {r['cache_misses']} misses, {r['cache_hits']} hits",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-wait", type=float, default=30.0, help="s to wait for quiet")
    parser.add_argument("--quick", action="store_true", help="16 images, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.images, args.rounds, args.max_wait = 16, 1, 2.0
    torch.set_num_threads(THREADS)
    logging.getLogger("softprompt").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        prompt_dir = make_prompt_dir(Path(tmp))
        fast = LoadedModel.from_bundle(prompt_dir, device="cpu", feature_cache="memory")
        slow = LoadedModel.from_bundle(prompt_dir, device="cpu", feature_cache="off")
    examples = test_examples(args.images, skip=4)
    warm = test_examples(4)  # untimed warm-up on other images (first-call costs)
    batched(fast, warm)
    naive(slow, warm[:2])
    runs: dict[str, list[dict]] = {"batched": [], "naive": []}
    outputs = {}
    for r in range(args.rounds):
        for name in ("batched", "naive") if r % 2 == 0 else ("naive", "batched"):
            fn = batched if name == "batched" else naive
            model = fast if name == "batched" else slow
            outputs[name], stats = timed(lambda: fn(model, examples), args.max_wait)  # noqa: B023
            runs[name].append(stats)
            print(f"  round {r + 1} {name}: {stats['seconds']:.2f} s", flush=True)
    result = {"images": len(examples), "rounds": runs}
    for name in runs:
        best = min(runs[name], key=lambda x: x["seconds"])
        result[name] = {**best, "images_per_s": len(examples) / best["seconds"]}
    result["ratio"] = result["naive"]["seconds"] / result["batched"]["seconds"]
    pairs = zip(runs["batched"], runs["naive"], strict=True)
    result["ratio_median"] = statistics.median(n["seconds"] / b["seconds"] for b, n in pairs)
    result["agree"] = sum(outputs["batched"][e.id] == outputs["naive"][e.id] for e in examples)
    result["agreement"] = result["agree"] / len(examples)
    result.update(cache_hits=fast.backbone.cache.hits, cache_misses=fast.backbone.cache.misses)
    result["predictions"] = {
        e.id: [outputs[k][e.id] for k in ("batched", "naive")] for e in examples
    }
    text = report(result)
    print(text)
    out = HERE / "results" / ("predict_quick.json" if args.quick else "predict.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"threads": THREADS, "batch_size": BATCH, "max_wait": args.max_wait}
    settings.update(busy_limit=common.BUSY_LIMIT, torch=torch.__version__)
    out.write_text(json.dumps({"settings": settings, **result, "table": text}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
