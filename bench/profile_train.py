"""Where a prompt-tuning training step spends its time: torch.profiler over a few steps.

    python bench/profile_train.py [--method ours|peft] [--batch-size 8] [--steps 3]

Prints the top operators by self CPU time and a coarse split (body matmuls, LM-head matmul,
attention, log-softmax/NLL, elementwise) for batches drawn as bench_train.py draws them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from softprompt.data.batching import input_lengths  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", choices=["ours", "peft"], default="ours")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    common.setup_torch()
    examples = common.load_examples()
    if args.method == "ours":
        backbone, prompt = common.load_ours()
        model, tokenizer, params = backbone.model, backbone.tokenizer, list(prompt.parameters())
    else:
        model, peft_model, weight = common.load_peft()
        tokenizer, params = backbone_tokenizer(), [weight]
    model.train()
    opt = torch.optim.AdamW(params, lr=common.LR)
    collate = common.make_collate(tokenizer)
    stream = common.batch_stream(
        input_lengths(examples, tokenizer), args.batch_size, args.method == "ours"
    )

    def step() -> None:
        batch = collate([examples[i] for i in next(stream)])
        with record_function("## forward"):
            if args.method == "ours":
                loss_sum, count = backbone.loss_sum(batch, prompt(batch["input_ids"].shape[0]))
                loss = loss_sum / count
            else:
                loss = peft_model(**batch).loss
        with record_function("## backward"):
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        print(
            f"batch {tuple(batch['input_ids'].shape)}, "
            f"labels {int((batch['labels'] != -100).sum())}",
            file=sys.stderr,
        )

    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.steps):
            step()
    events = prof.key_averages(group_by_input_shape=True)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    vocab = model.get_output_embeddings().weight.shape[0]
    split: dict[str, float] = {}
    for e in events:
        if e.key.startswith("## "):
            continue
        shapes = str(e.input_shapes)
        if e.key == "aten::mm":
            group = "lm_head matmul (fwd+bwd)" if str(vocab) in shapes else "body matmuls"
        elif "scaled_dot_product" in e.key:
            group = "attention (SDPA fwd+bwd)"
        elif "softmax" in e.key or "nll_loss" in e.key:
            group = "log_softmax / NLL (fwd+bwd)"
        else:
            group = "elementwise, copies, other"
        split[group] = split.get(group, 0.0) + e.self_cpu_time_total
    total = sum(split.values())
    print(f"\n{args.method}: self CPU time by kind over {args.steps} steps ({total / 1e6:.1f} s)")
    for group, us in sorted(split.items(), key=lambda kv: -kv[1]):
        print(f"  {group:32s} {us / 1e6:7.2f} s  {100 * us / total:5.1f}%")


def backbone_tokenizer():
    from softprompt.backbones.text_common import load_tokenizer

    return load_tokenizer(common.model_path())


if __name__ == "__main__":
    main()
