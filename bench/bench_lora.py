"""LoRA training throughput and loss parity: softprompt's LoRA path vs Hugging Face PEFT LoRA.

    python bench/bench_lora.py [--steps N] [--rounds R] [--warmup W] [--quick] [--bf16]

Both models (SmolLM2-135M, float32, LoRA r=8 alpha=16 on q_proj/v_proj, no dropout) live in
this one process and start from the same LoRA weights (ours are copied into PEFT's). Ours is
`LoraTuner.create` + `backbone.loss_sum(batch, None)`; PEFT is `get_peft_model` and a plain
loop over `model(input_ids, attention_mask, labels).loss`. Both train with AdamW (lr 2e-4) on
byte-identical, pre-collated, length-grouped batches of 8 aclsum examples. Before any update,
3 batches are scored in eval mode (loss parity, relative difference < 1e-4 or exit 1). Then
W warm-up steps each, and R rounds of the same N timed steps, the two paths' steps
interleaved (A B B A ...) so background load hits both alike; a step disturbed by other
processes is re-run from a snapshot, as in bench_train.py. Reported: the median and min-max
over rounds of each path's samples/s and of the paired per-round ratio ours/PEFT.
--bf16: what `training.bf16: true` gives each: ours with `model.dtype: bfloat16` (frozen
weights in bfloat16, LoRA weights float32, eager attention, as train/setup.py sets up),
PEFT with float32 weights under bf16 autocast (Trainer's `bf16=True`); both steps under
autocast, loss parity within 3e-2.
Results: a Markdown table on stdout and bench/results/lora_vs_peft.json (--quick: _quick.json;
--bf16: lora_vs_peft_bf16.json).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "lora_vs_peft.json"
sys.path.insert(0, str(HERE))

import common  # noqa: E402  (torch, transformers, softprompt)
import torch  # noqa: E402

R, ALPHA, LR, TARGETS = 8, 16, 2e-4, ["q_proj", "v_proj"]
PARITY_LIMIT = 1e-4
PARITY_LIMIT_BF16 = 3e-2
PEFT_PREFIX = "base_model.model."


class Runner:
    """One training path: its loss, LoRA parameters (by shared name), optimizer, records."""

    def __init__(self, name: str, model, loss_of, named: dict[str, torch.nn.Parameter], bf16=False):
        self.name, self.model, self.named = name, model, named
        self.loss_of = autocast_loss(loss_of) if bf16 else loss_of
        self.params = list(named.values())
        self.opt = torch.optim.AdamW(self.params, lr=LR)
        self.rounds: list[list[dict]] = []
        self.retries = 0

    def step(self, batch: dict) -> dict:
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = self.loss_of(batch)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return {
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu_start,
            "samples": batch["input_ids"].shape[0],
            "loss": float(loss.detach()),
        }


def autocast_loss(loss_of):
    def loss(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return loss_of(batch).float()

    return loss


def load_paths(settings, bf16: bool = False):
    """(our backbone, ours: LoraTuner in it, PEFT's: get_peft_model), same initial LoRA."""
    from peft import LoraConfig, get_peft_model

    from softprompt.backbones.loading import load_backbone
    from softprompt.train.setup import use_eager_attention
    from softprompt.tuners.lora.tuner import LoraTuner

    backbone = load_backbone(common.MODEL, dtype="bfloat16" if bf16 else "float32")
    torch.manual_seed(common.SEED)
    LoraTuner.create(settings, backbone)
    if bf16:
        use_eager_attention(backbone)
    ours_named = {n: p for n, p in backbone.model.named_parameters() if "lora_" in n}
    with torch.no_grad():  # trainable weights stay float32 (train/setup.py does the same)
        for param in ours_named.values():
            param.data = param.data.float()

    hf = load_backbone(common.MODEL).model
    torch.manual_seed(common.SEED)
    config = LoraConfig(
        r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(hf, config)
    peft_named = {
        n.removeprefix(PEFT_PREFIX): p for n, p in peft_model.named_parameters() if "lora_" in n
    }
    if ours_named.keys() != peft_named.keys():
        raise RuntimeError("LoRA layers differ between ours and PEFT's model")
    with torch.no_grad():
        for name, param in ours_named.items():
            peft_named[name].copy_(param)
    for named in (ours_named, peft_named):
        if not all(p.requires_grad for p in named.values()):
            raise RuntimeError("some LoRA weights are frozen")

    def ours_loss(batch):
        loss_sum, count = backbone.loss_sum(batch, None)
        return loss_sum / count

    def peft_loss(batch):
        return peft_model(**batch).loss

    ours = Runner("ours", backbone.model, ours_loss, ours_named, bf16)
    return backbone, ours, Runner("peft", peft_model, peft_loss, peft_named, bf16)


def check_parity(ours: Runner, peft: Runner, batches: list[dict]) -> dict:
    """Eval-mode losses on `batches` before any update, and the LoRA gradient on the first."""
    rows = []
    for path in (ours, peft):
        path.model.eval()
    with torch.no_grad():
        for k, batch in enumerate(batches):
            a, b = float(peft.loss_of(batch)), float(ours.loss_of(batch))
            rows.append({"batch": k, "peft": a, "ours": b, "rel_diff": abs(b - a) / abs(a)})
    grads = {}
    for path in (ours, peft):
        path.loss_of(batches[0]).backward()
        grads[path.name] = torch.cat([path.named[n].grad.flatten() for n in sorted(path.named)])
        path.opt.zero_grad(set_to_none=True)
        path.model.train()
    diff = (grads["ours"] - grads["peft"]).norm() / grads["peft"].norm()
    worst = max(r["rel_diff"] for r in rows)
    return {"batches": rows, "max_rel_diff": worst, "grad_rel_diff_batch0": float(diff)}


def timed_step(path: Runner, batch: dict, budget: dict) -> dict:
    """One optimizer step; re-run from a snapshot (LoRA weights and AdamW state) while other
    processes' CPU use overlaps it by more than common.BUSY_LIMIT cores, up to `path.retries`
    times (waits for a quiet machine: <= 20 s each, 180 s per run, counted in `budget`); the
    fastest attempt counts and the training trajectory is unchanged."""
    weights = [p.detach().clone() for p in path.params]
    state = copy.deepcopy(path.opt.state_dict())
    best, attempt = None, 0
    while True:
        busy = common.machine_busy_seconds()
        record = path.step(batch)
        other = common.machine_busy_seconds() - busy - record["cpu_seconds"]
        record["background_cores"] = max(0.0, other) / record["seconds"]
        if best is None or record["seconds"] < best["seconds"]:
            best = record
        attempt += 1
        if record["background_cores"] < common.BUSY_LIMIT or path.retries <= 0:
            break
        path.retries -= 1
        budget["waited"] += common.wait_for_quiet(min(20.0, max(0.0, 180.0 - budget["waited"])))
        with torch.no_grad():
            for p, w in zip(path.params, weights, strict=True):
                p.copy_(w)
        path.opt.load_state_dict(copy.deepcopy(state))
    best["attempts"] = attempt
    return best


def full_batches(lengths: list[int], size: int, count: int, start_epoch: int) -> list[list[int]]:
    """`count` full, length-grouped batches of example indices (epochs from `start_epoch`)."""
    stream = common.batch_stream(lengths, size, True, start_epoch=start_epoch)
    return list(itertools.islice((b for b in stream if len(b) == size), count))


def rate(records: list[dict]) -> float:
    """Samples per second over a round's timed steps."""
    return sum(x["samples"] for x in records) / sum(x["seconds"] for x in records)


def summarize(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def report(results: dict) -> str:
    s, ratio = results["samples_per_s"], results["ratio_samples_per_s"]
    lines = [
        "| path | samples/s (median) | spread (min-max) | ratio ours/PEFT |",
        "|---|---:|---:|---:|",
        f"| PEFT LoRA, plain loop | {s['peft']['median']:.3f} | "
        f"{s['peft']['min']:.3f}-{s['peft']['max']:.3f} | 1.00 |",
        f"| softprompt LoRA (ours) | {s['ours']['median']:.3f} | "
        f"{s['ours']['min']:.3f}-{s['ours']['max']:.3f} | **{ratio['median']:.2f}x** "
        f"({ratio['min']:.2f}-{ratio['max']:.2f}) |",
        "",
        f"{results['rounds']} rounds x {results['steps']} timed steps of "
        f"{results['batch_size']} (after {results['warmup_steps']} warm-up steps); ratio = "
        "median (min-max) of the per-round ratios",
    ]
    m = results["machine"]
    lines += [
        parity_line(results["parity"]),
        "training-loss trajectory, round 1, max rel diff ours vs PEFT: "
        f"{results['trajectory_max_rel_diff']:.2e}",
        f"machine: {results['threads']} torch threads; load avg at start {m['loadavg_start']}, "
        f"end {m['loadavg_end']}; steps re-run {m['reruns']}, still disturbed "
        f"{m['disturbed_steps']}, waited {m['seconds_waited_for_quiet']:.0f} s for quiet",
    ]
    return "\n".join(lines)


def parity_line(p: dict) -> str:
    rows = ", ".join(f"{r['rel_diff']:.1e}" for r in p["batches"])
    return (
        f"loss parity (eval, 3 identical batches, same initial LoRA): rel diff {rows} (max "
        f"{p['max_rel_diff']:.2e}, limit {p.get('limit', PARITY_LIMIT):.0e}); LoRA gradient rel diff, batch 0: "
        f"{p['grad_rel_diff_batch0']:.2e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (median over them)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="smoke run (3 timed steps)")
    parser.add_argument("--bf16", action="store_true", help="both paths in bf16 (see above)")
    args = parser.parse_args()
    args.steps = args.steps or (3 if args.quick else 12)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if args.rounds < 3 and not args.quick:
        parser.error("--rounds must be >= 3")

    from softprompt.data.batching import input_lengths
    from softprompt.tuners.lora.config import LoraSettings

    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[bench] {time.perf_counter() - started:.0f} s: {message}", file=sys.stderr)

    load_start = os.getloadavg()
    common.setup_torch()
    settings = LoraSettings(enabled=True, r=R, alpha=ALPHA, dropout=0.0, target_modules="auto")
    backbone, ours, peft = load_paths(settings, args.bf16)
    log("models loaded")
    examples = common.load_examples()
    lengths = input_lengths(examples, backbone.tokenizer)

    def batches(count: int, epoch: int) -> list[dict]:  # the backbone's training collation
        indices = full_batches(lengths, args.batch_size, count, epoch)
        return [
            backbone.collate([examples[i] for i in b], common.SETTINGS, with_targets=True)
            for b in indices
        ]

    timed, warm = batches(args.steps, 0), batches(args.warmup, common.WARMUP_EPOCH)
    parity = check_parity(ours, peft, timed[:3])
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **{k: v for k, v in common.run_settings().items() if k != "flop_definition"},
        "num_virtual_tokens": 0,
        "lr": LR,
        "optimizer": "AdamW (torch defaults besides lr), LoRA weights only, float32",
        "bf16": args.bf16,
        "lora": {"r": R, "alpha": ALPHA, "dropout": 0.0, "target_modules": TARGETS},
        "trainable_parameters": sum(p.numel() for p in ours.params),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "rounds": args.rounds,
        "parity": parity,
    }
    parity["limit"] = PARITY_LIMIT_BF16 if args.bf16 else PARITY_LIMIT
    failed = parity["max_rel_diff"] >= parity["limit"]
    print(parity_line(parity), file=sys.stdout if failed else sys.stderr)
    if failed:
        print(f"[bench] FAIL: loss parity {parity['max_rel_diff']:.2e}", file=sys.stderr)
        sys.exit(1)

    # Re-runs (per path, as bench_train.py's per worker) add at most ~25% to the timed part.
    budget = {"waited": common.wait_for_quiet(30.0)}
    for path in (ours, peft):
        path.retries = args.rounds * ((args.steps + 3) // 4)
    log(f"parity done; machine quiet after {budget['waited']:.0f} s")
    for i, batch in enumerate(warm):
        for path in (ours, peft) if i % 2 == 0 else (peft, ours):
            path.step(batch)
    log("warm-up done")
    for r in range(args.rounds):
        for path in (ours, peft):
            path.rounds.append([])
        for i, batch in enumerate(timed):
            for path in (ours, peft) if (r + i) % 2 == 0 else (peft, ours):
                path.rounds[-1].append(timed_step(path, batch, budget))
        rates = [rate(p.rounds[-1]) for p in (ours, peft)]
        log(f"round {r + 1}/{args.rounds}: ours {rates[0]:.3f}, PEFT {rates[1]:.3f} samples/s")

    per_round = {p.name: [rate(rnd) for rnd in p.rounds] for p in (ours, peft)}
    ratios = [a / b for a, b in zip(per_round["ours"], per_round["peft"], strict=True)]
    first = zip(ours.rounds[0], peft.rounds[0], strict=True)
    records = [x for p in (ours, peft) for rnd in p.rounds for x in rnd]
    results.update(
        {
            "samples_per_s": {k: summarize(v) for k, v in per_round.items()},
            "samples_per_s_per_round": per_round,
            "ratio_samples_per_s": summarize(ratios),
            "ratio_per_round": ratios,
            "trajectory_max_rel_diff": max(
                abs(a["loss"] - b["loss"]) / b["loss"] for a, b in first
            ),
            "steps_detail": {
                p.name: [{k: [round(x[k], 4) for x in rnd] for k in rnd[0]} for rnd in p.rounds]
                for p in (ours, peft)
            },
            "machine": {
                "loadavg_start": [round(x, 2) for x in load_start],
                "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                "reruns": sum(x["attempts"] - 1 for x in records),
                "disturbed_steps": sum(x["background_cores"] >= common.BUSY_LIMIT for x in records),
                "seconds_waited_for_quiet": budget["waited"],
            },
            "wall_seconds": time.perf_counter() - started,
        }
    )
    if results["machine"]["disturbed_steps"]:
        print(
            f"[bench] WARNING: {results['machine']['disturbed_steps']} timed steps ran beside "
            "other processes' CPU use even after retries; the numbers are unreliable",
            file=sys.stderr,
        )
    suffix = ("_bf16" if args.bf16 else "") + ("_quick" if args.quick else "")
    path = RESULTS.with_name(RESULTS.stem + suffix + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    print(f"\n(results written to {path}; wall {results['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
