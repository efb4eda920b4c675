"""Epoch-2 training time with the frozen-feature cache (memory) vs without (off).

    python bench/bench_feature_cache.py [--examples 128] [--rounds 3] [--quick]

(a) `embedded:effnet-smollm2` (4 image tokens, trainable MLP projection), easy-VQA train, one
question per image; (b) a tiny InstructBLIP (OPT) from tests/tiny_checkpoints.py on colour_images.
Per model one backbone serves both modes (`cache.enabled` is what feature_cache="off" sets);
they train the same parameters from the same start, own AdamW state each, on the same batches
of 16, stepping as the trainer does, interleaved step by step in alternating order. Each epoch
waits for a quiet machine (--max-wait s); a warm step of >= 0.2 s disturbed by other processes
is re-run from a snapshot after another wait (fastest attempt counts). Epoch 1 fills the cache
(timed, never re-run); the median of --rounds warm epochs is reported. Forward hooks time the
frozen vision modules.
Results: stdout and bench/results/feature_cache.json (--quick: feature_cache_quick.json).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]  # common; tiny_checkpoints, helpers

import common  # noqa: E402

from softprompt.backbones.base import EncodeSettings  # noqa: E402
from softprompt.backbones.loading import load_backbone  # noqa: E402
from softprompt.backbones.vision_base import VisionSettings  # noqa: E402
from softprompt.data.batching import epoch_batches  # noqa: E402
from softprompt.data.records import VisionExample  # noqa: E402
from softprompt.data.vision import load_vision_examples  # noqa: E402
from softprompt.tasks.kinds import VisionTask  # noqa: E402
from softprompt.tuners.prompt_tuning.model import SoftPrompt  # noqa: E402

THREADS, SEED, BATCH, NUM_VIRTUAL_TOKENS = 2, 0, 16, 10
MODES = ("memory", "off")
BUSY_LIMIT = common.BUSY_LIMIT  # cores of other processes' CPU use that make a step re-run
LR, EXTRA_LR = 3e-2, 1e-3  # prompt, projection (as configs/easyvqa_effnet_smollm2.yaml)
SETTINGS = EncodeSettings(max_input_length=128, max_target_length=16)


class Meter:
    """Wall time and calls inside forward-hooked modules (which must not nest) or methods."""

    def __init__(self, modules=(), obj=None, method: str = "") -> None:
        self.seconds, self.calls, self._start = 0.0, 0, 0.0
        for m in modules:
            m.register_forward_pre_hook(lambda *_: setattr(self, "_start", time.perf_counter()))
            m.register_forward_hook(lambda *_: self._stop())
        if obj is not None:
            inner = getattr(obj, method)

            def wrapper(*args, **kwargs):
                self._start = time.perf_counter()
                try:
                    return inner(*args, **kwargs)
                finally:
                    self._stop()

            setattr(obj, method, wrapper)

    def _stop(self) -> None:
        self.seconds, self.calls = self.seconds + time.perf_counter() - self._start, self.calls + 1


def wait_quiet(max_wait: float, probe: float = 0.25) -> None:
    """Sleep until other processes use under BUSY_LIMIT cores (at most `max_wait` s)."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_wait:
        busy, cpu = common.machine_busy_seconds(), time.process_time()
        time.sleep(probe)
        if common.machine_busy_seconds() - busy - (time.process_time() - cpu) < BUSY_LIMIT * probe:
            return


def easyvqa_model(n: int, tmp: Path):
    vision = VisionSettings(num_image_tokens=4, projection="mlp")
    bb = load_backbone("embedded:effnet-smollm2", vision=vision)
    first: dict[str, VisionExample] = {}
    for e in load_vision_examples("builtin:easy-vqa", task_type="vqa", split="train")[0]:
        first.setdefault(e.image_path, e)  # one question per image: epoch 1 misses every row
    task = VisionTask(type="vqa", template="Question: {question} Answer:", max_new_tokens=3)
    # The encoder runs through `forward_features`, which skips the module's own hooks.
    frozen, path = Meter(list(bb.encoder.module.children())), Meter(obj=bb, method="image_features")
    return bb, task.prepare(list(first.values())[:n]), frozen, path


def instructblip_model(n: int, tmp: Path):
    from helpers import colour_images
    from tiny_checkpoints import build_vlm

    bb = load_backbone(str(build_vlm("instructblip-opt", tmp)), "instructblip")
    images = colour_images(tmp / "images", per_colour=(n + 1) // 2)
    examples = [
        VisionExample(id=str(p), image_path=str(p), label=colour, target=colour)
        for colour, paths in images.items()
        for p in paths
    ][:n]
    words = {"red": "red", "blue": "blue"}
    task = VisionTask("classify", "{instruction} Answer:", "What colour?", list(words), words)
    frozen = Meter([bb.model.hf.vision_model, bb.model.hf.qformer, bb.model.hf.language_projection])
    return bb, task.prepare(examples), frozen, Meter(obj=bb, method="image_prefix")


def bench_model(name, bb, examples, frozen: Meter, path: Meter, rounds: int, wait: float) -> dict:
    torch.manual_seed(SEED)
    prompt = SoftPrompt(NUM_VIRTUAL_TOKENS, bb.hidden_size)
    with torch.no_grad():
        rows = torch.randint(0, bb.word_embeddings().shape[0], (NUM_VIRTUAL_TOKENS,))
        prompt.embedding.weight.copy_(bb.word_embeddings().detach()[rows].float())
    extra = [p for m in bb.trainable_modules().values() for p in m.parameters() if p.requires_grad]
    groups = [{"params": list(prompt.parameters()), "lr": LR}]
    groups += [{"params": extra, "lr": EXTRA_LR}] if extra else []
    params = [p for g in groups for p in g["params"]]
    values = {m: [p.detach().clone() for p in params] for m in MODES}
    opts = {m: torch.optim.AdamW(groups, lr=LR) for m in MODES}
    lengths = [len(e.text) + len(e.target or "") for e in examples]
    budget = {"reruns_left": 2 * rounds * math.ceil(len(examples) / BATCH)}
    bb.model.train()

    def attempt(mode: str, idx: list[int]) -> dict:
        with torch.no_grad():
            for p, v in zip(params, values[mode], strict=True):
                p.copy_(v)
        hits, misses = bb.cache.hits, bb.cache.misses
        frozen.seconds = frozen.calls = path.seconds = 0
        busy, wall, cpu = common.machine_busy_seconds(), time.perf_counter(), time.process_time()
        batch = bb.collate([examples[i] for i in idx], SETTINGS, with_targets=True)
        loss_sum, count = bb.loss_sum(batch, prompt(len(idx)))
        (loss_sum / count).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opts[mode].step()
        opts[mode].zero_grad(set_to_none=True)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        other = max(0.0, common.machine_busy_seconds() - busy - cpu)
        rec = {"seconds": wall, "cpu_seconds": cpu, "background_cores": other / wall}
        rec.update(frozen_seconds=frozen.seconds, frozen_calls=frozen.calls)
        rec.update(feature_path_seconds=path.seconds, loss_sum=float(loss_sum.detach()))
        rec.update(cache_hits=bb.cache.hits - hits, cache_misses=bb.cache.misses - misses)
        return rec

    def step(mode: str, idx: list[int], rerun: bool) -> dict:
        bb.cache.enabled = mode == "memory"
        state, best = copy.deepcopy(opts[mode].state_dict()), None
        while True:
            record = attempt(mode, idx)
            best = record if best is None or record["seconds"] < best["seconds"] else best
            # /proc/stat counts 10 ms ticks: shorter steps are not judged (nor re-run).
            quiet = record["seconds"] < 0.2 or record["background_cores"] < BUSY_LIMIT
            if not rerun or quiet or budget["reruns_left"] <= 0:
                break
            budget["reruns_left"] -= 1
            opts[mode].load_state_dict(copy.deepcopy(state))
            wait_quiet(wait)
        with torch.no_grad():
            for p, v in zip(params, values[mode], strict=True):
                v.copy_(p)
        return best

    def epoch(index: int) -> list[dict]:
        batches = epoch_batches(lengths, BATCH, SEED, index, group_by_length=True)
        rows = {m: {"mode": m, "epoch": index + 1, "steps": len(batches)} for m in MODES}
        wait_quiet(wait)  # once per epoch: a pause before every step would make steps cold
        for k, idx in enumerate(batches):
            for mode in MODES if k % 2 == 0 else MODES[::-1]:
                for key, value in step(mode, idx, rerun=index > 0).items():
                    rows[mode][key] = rows[mode].get(key, 0) + value
        for row in rows.values():
            row["background_cores"] /= len(batches)
        times = ", ".join(f"{m} {rows[m]['seconds']:.2f} s" for m in MODES)
        print(f"  {name} epoch {index + 1}: {times}", flush=True)
        return list(rows.values())

    # Untimed warm-up (first-call costs): forward + backward without the cache, no step.
    bb.cache.enabled = False
    batch = bb.collate(examples[:BATCH], SETTINGS, with_targets=True)
    bb.loss_sum(batch, prompt(len(batch["image_paths"])))[0].backward()
    for p in params:
        p.grad = None
    log = epoch(0) + [row for r in range(rounds) for row in epoch(1 + r)]

    def warm(mode: str, key: str = "seconds") -> float:
        return statistics.median(r[key] for r in log[2:] if r["mode"] == mode)

    e1, e2 = ({r["mode"]: r for r in log[i : i + 2]} for i in (0, 2))
    res = {"model": name, "examples": len(examples), "steps_per_epoch": log[0]["steps"]}
    res.update(warm_epochs=rounds, trainable_parameters=sum(p.numel() for p in params))
    for m in MODES:
        res[f"epoch1_{m}_s"], res[f"epoch2_{m}_s"] = e1[m]["seconds"], warm(m)
        res[f"frozen_share_{m}"] = warm(m, "frozen_seconds") / warm(m)
        res[f"feature_path_share_{m}"] = warm(m, "feature_path_seconds") / warm(m)
    res["ratio"] = res["epoch2_off_s"] / res["epoch2_memory_s"]
    res["cpu_ratio"] = warm("off", "cpu_seconds") / warm("memory", "cpu_seconds")
    res["background_cores_warm"] = statistics.mean(r["background_cores"] for r in log[2:])
    res["epoch2_cached"] = {
        k: e2["memory"][k] for k in ("cache_hits", "cache_misses", "frozen_calls")
    }
    loss = [e2[m]["loss_sum"] for m in MODES]
    return {**res, **budget, "same_epoch2_loss": math.isclose(*loss, rel_tol=1e-4), "epochs": log}


def report(results: list[dict]) -> str:
    lines = [
        "| model | examples | steps/epoch | epoch 1 memory (fill) s | epoch 1 off s | "
        "epoch 2+ off s | epoch 2+ memory s | off/memory | frozen vision share (cached) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        cells = [r["model"], r["examples"], r["steps_per_epoch"]]
        cells += [f"{r[k]:.2f}" for k in ("epoch1_memory_s", "epoch1_off_s", "epoch2_off_s")]
        cells += [f"{r['epoch2_memory_s']:.2f}", f"{r['ratio']:.2f}x"]
        lines.append("| " + " | ".join(map(str, cells)) + f" | {r['frozen_share_memory']:.2%} |")
    lines.append("\nepoch 2+: median of the warm epochs 2..N (N-1 = --rounds, x5 for InstructBLIP)")
    for r in results:
        c = r["epoch2_cached"]
        lines.append(
            f"{r['model']}: no-cache / cache epoch-2 time = {r['ratio']:.2f}x (CPU time "
            f"{r['cpu_ratio']:.2f}x); cached epoch 2: {c['cache_hits']} hits, "
            f"{c['cache_misses']} misses, {c['frozen_calls']} frozen-module calls, frozen vision "
            f"{r['frozen_share_memory']:.2%} of the epoch (target < 2%), feature path (lookup, "
            f"or loading + frozen stages) {r['feature_path_share_memory']:.2%}; without the "
            f"cache: frozen modules {r['frozen_share_off']:.1%}, feature path "
            f"{r['feature_path_share_off']:.1%}; same epoch-2 loss both modes: "
            f"{r['same_epoch2_loss']}; other processes during warm steps: "
            f"{r['background_cores_warm']:.2f} cores ({r['reruns_left']} re-runs left)"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="warm epochs (x5 for InstructBLIP)")
    parser.add_argument("--models", default="effnet-smollm2,instructblip-opt")
    parser.add_argument("--max-wait", type=float, default=30.0, help="s to wait for quiet")
    parser.add_argument("--quick", action="store_true", help="32 examples, 1 warm epoch")
    args = parser.parse_args()
    if args.quick:
        args.examples, args.rounds, args.max_wait = 32, 1, 2.0
    torch.set_num_threads(THREADS)
    builders = {"effnet-smollm2": easyvqa_model, "instructblip-opt": instructblip_model}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            setup = builders[name](args.examples, Path(tmp))
            rounds = args.rounds * (5 if name == "instructblip-opt" else 1)  # ms-long steps
            results.append(bench_model(name, *setup, rounds=rounds, wait=args.max_wait))
    text = report(results)
    print(text)
    out = HERE / "results" / ("feature_cache_quick.json" if args.quick else "feature_cache.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"threads": THREADS, "batch_size": BATCH, "num_virtual_tokens": NUM_VIRTUAL_TOKENS}
    meta.update(max_wait=args.max_wait, busy_limit=BUSY_LIMIT, torch=torch.__version__)
    out.write_text(json.dumps({"settings": meta, "results": results, "table": text}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
