"""Memory per process of a sharded (`training.sharding: fsdp`) 7B run, from the shard sizes.

    python bench/fsdp_memory.py

Model: Llama-2-7B's architecture (hidden 4096, 32 layers, 32 heads, MLP 11008, vocab
32000, untied head) built on the meta device: no weights, only shapes. The blocks to
shard are chosen by the code a run uses (`shard_units`), and each process's share is
counted as FSDP2 splits parameters (dim 0, as `torch.chunk`; `elements_per_process`,
which the sharding tests check against the local shards of real two-process runs).
Bytes: 16 per trained element (float32 weights, gradients, two AdamW moments: mixed
precision keeps float32 master weights), 2 per frozen one (bfloat16). Activations and
the gathered weights of the block being computed come on top, and depend on batch and
sequence length; evaluation and saving gather every sharded block (`Sharding.gathered`),
so they need the whole weights once more while they run.
Results: stdout and bench/results/fsdp_memory.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from softprompt.train.sharding import bytes_per_process, elements_per_process, shard_units

LLAMA_7B = LlamaConfig(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32000,
    tie_word_embeddings=False,
)
PROCESSES = (1, 2, 4, 8)
OUT = Path(__file__).resolve().parent / "results" / "fsdp_memory.json"


def model(method: str) -> torch.nn.Module:
    with torch.device("meta"):
        built = LlamaForCausalLM(LLAMA_7B)
    if method == "full":
        built.requires_grad_(True)
        return built
    built.requires_grad_(False)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    return get_peft_model(built, lora)


def rows() -> list[dict]:
    out = []
    for method in ("full", "lora"):
        built = model(method)
        params = list(built.parameters())
        for world in PROCESSES:
            units = shard_units(built) if world > 1 else []
            held = elements_per_process(params, units, world, rank=0)
            out.append(
                {
                    "method": method,
                    "processes": world,
                    "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
                    "held_by_process_0": held,
                    "gib_per_process": bytes_per_process(held) / 2**30,
                }
            )
    return out


def main() -> None:
    table = rows()
    print("| method | processes | trained elements held | GiB per process |")
    print("|---|---:|---:|---:|")
    for row in table:
        held = row["held_by_process_0"]["trainable_parameters"]
        print(f"| {row['method']} | {row['processes']} | {held:,} | {row['gib_per_process']:.1f} |")
    OUT.write_text(json.dumps({"model": "Llama-2-7B architecture", "rows": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
