"""Shared pieces of the training benchmarks: data, collation, FLOP counting, memory, peak FLOP/s.

The workers import it; the parent of bench_train.py only once they are done (it pulls in torch).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import torch
from torch import nn

from softprompt.backbones.base import EncodeSettings
from softprompt.backbones.causal_lm import CausalLMBackbone
from softprompt.backbones.embedded import resolve_embedded
from softprompt.data.batching import epoch_batches
from softprompt.data.records import TextExample
from softprompt.data.text import load_text_examples

MODEL = "embedded:smollm2-135m"
DATA = "builtin:aclsum/outcome"
TEMPLATE = "{input}\nSummary:"
SETTINGS = EncodeSettings(max_input_length=256, max_target_length=64)
NUM_VIRTUAL_TOKENS = 20
LR = 3e-2
SEED = 0
THREADS = 2
BUSY_LIMIT = 0.15  # cores of other processes' CPU use during a timed step that make it re-run
# Warm-up batches come from this epoch of the same order, far from the timed epochs 0, 1, ...
WARMUP_EPOCH = 1000

Batch = dict[str, torch.Tensor]


def run_settings() -> dict:
    return {
        "threads": THREADS,
        "model": MODEL,
        "data": DATA,
        "template": TEMPLATE,
        "max_input_length": SETTINGS.max_input_length,
        "max_target_length": SETTINGS.max_target_length,
        "num_virtual_tokens": NUM_VIRTUAL_TOKENS,
        "lr": LR,
        "optimizer": "AdamW (torch defaults besides lr), prompt only, float32",
        "flop_definition": FLOP_DEFINITION,
    }


def setup_torch() -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)


def model_path() -> str:
    return resolve_embedded(MODEL)


def load_examples() -> list[TextExample]:
    return load_text_examples(DATA, split="train", template=TEMPLATE)


def make_collate(tokenizer) -> Callable[[list[TextExample]], Batch]:
    """The backbone's own training collation (right padding, labels -100 on input and padding).

    `CausalLMBackbone.collate` only touches `self.tokenizer`, so the PEFT worker reuses it
    without loading a second model: both methods see byte-identical batches.
    """
    holder = SimpleNamespace(tokenizer=tokenizer)

    def collate(examples: list[TextExample]) -> Batch:
        return CausalLMBackbone.collate(holder, examples, SETTINGS, with_targets=True)

    return collate


def batch_stream(
    lengths: list[int], batch_size: int, group_by_length: bool, start_epoch: int = 0
) -> Iterator[list[int]]:
    """Batches of example indices, epoch after epoch.

    group_by_length=False is a plain seeded shuffle cut into consecutive batches.
    """
    epoch = start_epoch
    while True:
        yield from epoch_batches(
            lengths, batch_size, SEED, epoch, shuffle=True, group_by_length=group_by_length
        )
        epoch += 1


def prompt_init(word_embeddings: torch.Tensor) -> torch.Tensor:
    """Seeded prompt weights (rows of the vocabulary), identical for both methods."""
    g = torch.Generator().manual_seed(SEED)
    rows = torch.randint(1000, word_embeddings.shape[0], (NUM_VIRTUAL_TOKENS,), generator=g)
    return word_embeddings.detach()[rows].clone().float()


def load_ours(bf16: bool = False):
    """Our backbone and a SoftPrompt holding `prompt_init`'s weights.

    bf16: what `training.bf16: true` with `model.dtype: bfloat16` sets up: frozen weights in
    bfloat16, eager attention (train/setup.py), the prompt in float32.
    """
    from softprompt.backbones.loading import load_backbone
    from softprompt.train.setup import use_eager_attention
    from softprompt.tuners.prompt_tuning.model import SoftPrompt

    backbone = load_backbone(MODEL, dtype="bfloat16" if bf16 else "float32")
    if bf16:
        use_eager_attention(backbone)
    prompt = SoftPrompt(NUM_VIRTUAL_TOKENS, backbone.hidden_size)
    with torch.no_grad():
        prompt.embedding.weight.copy_(prompt_init(backbone.word_embeddings()))
    return backbone, prompt


def load_peft():
    """(base HF model, PEFT prompt-tuning model, its prompt weight) with `prompt_init`'s weights.

    Its bf16 run is what a PEFT user gets from autocast (Trainer's `bf16=True`): float32
    weights, the model's default attention.
    """
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path(), dtype=torch.float32)
    config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=NUM_VIRTUAL_TOKENS)
    model = get_peft_model(base, config)
    weight = model.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        weight.copy_(prompt_init(base.get_input_embeddings().weight))
    return base, model, weight


def parity_probe(model, loss_of, weight, examples, collate, batch_size: int) -> dict:
    """Eval-mode losses on 3 fixed batches (first examples, <= 4 each) and the prompt gradient
    on the first, from the initial prompt; the parent compares the two methods' probes."""
    model.eval()
    size = min(batch_size, 4)
    batches = [collate(examples[k * size : (k + 1) * size]) for k in range(3)]
    with torch.no_grad():
        losses = [float(loss_of(batch)) for batch in batches]
    loss_of(batches[0]).backward()
    grad = weight.grad.flatten().tolist()
    weight.grad = None
    model.train()
    return {"batch_size": size, "losses": losses, "grad": grad}


# ----------------------------------------------------------------------------- FLOPs


def flop_constants(model: nn.Module) -> dict[str, int]:
    """N_body (matmul weights of the transformer layers), V, D, layers, heads, head_dim."""
    cfg = model.config
    layers = model.get_decoder().layers if hasattr(model, "get_decoder") else model.model.layers
    n_body = sum(m.weight.numel() for m in layers.modules() if isinstance(m, nn.Linear))
    head = model.get_output_embeddings().weight
    n_heads = cfg.num_attention_heads
    return {
        "n_body": n_body,
        "vocab": head.shape[0],
        "hidden": head.shape[1],
        "layers": cfg.num_hidden_layers,
        "heads": n_heads,
        "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads,
    }


FLOP_DEFINITION = (
    "FLOPs = 2 per multiply-add of the model's matmuls, fwd + bwd of activations only (the "
    "backbone is frozen, so no weight-gradient matmuls): 4*N_body per executed position "
    "(every position of the padded (B, P+T) tensor, prompt and padding included; N_body = "
    "weights of the Linear layers in the transformer blocks, embeddings excluded) + 4*V*D per "
    "position where logits are computed (all positions for PEFT, label positions for ours). "
    "Attention scores/values (QK^T, AV), norms, activations, softmax/CE and the optimizer are "
    "excluded from MFU; attention (full SxS, fwd+bwd = 12*L*H*d_head*S^2 per row) is reported "
    "separately."
)


def step_flops(consts: dict[str, int], positions: int, head_positions: int) -> int:
    return (
        4 * consts["n_body"] * positions + 4 * consts["vocab"] * consts["hidden"] * head_positions
    )


def attention_flops(consts: dict[str, int], batch: int, seq: int) -> int:
    return 12 * consts["layers"] * consts["heads"] * consts["head_dim"] * batch * seq * seq


# ----------------------------------------------------------------------------- machine


def peak_rss_mb() -> dict[str, float]:
    """Peak resident memory of this process in MiB.

    VmHWM is the high-water mark of this process's own address space; ru_maxrss can also carry
    the parent's peak across fork+exec, so VmHWM is the number reported.
    """
    hwm = float("nan")
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"vm_hwm_mb": round(hwm, 1), "ru_maxrss_mb": round(maxrss, 1)}


def machine_busy_seconds() -> float:
    """Non-idle CPU time of the whole machine so far (all processes), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


def wait_for_quiet(limit_s: float, threshold: float = BUSY_LIMIT) -> float:
    """Sleep until a second passes with under `threshold` cores busy machine-wide (this
    process idles meanwhile), or until `limit_s`; returns the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < limit_s:
        busy = machine_busy_seconds()
        time.sleep(1.0)
        if machine_busy_seconds() - busy < threshold:
            break
    return time.perf_counter() - start


def matmul_rate(n: int = 2048, iters: int = 3, dtype: torch.dtype = torch.float32) -> float:
    """torch.mm FLOP/s (2*n^3 per product) in `dtype` over `iters` products after one untimed one.

    The operands are allocated per call, so between training steps they do not raise the
    process's peak RSS (activations are freed by then).
    """
    g = torch.Generator().manual_seed(SEED)
    a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
    out = torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(iters):
        torch.mm(a, b, out=out)
    return 2 * n**3 * iters / (time.perf_counter() - start)


PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_flops_per_s(n: int = 2048, rounds: int = 5) -> dict[str, dict]:
    """Best torch.mm throughput per dtype (fp32, bf16) over `rounds` timed rounds of 10
    products, warmed up: the physical limits the training steps are measured against."""
    peaks = {}
    for name, dtype in PEAK_DTYPES.items():
        matmul_rate(n, 3, dtype)
        rates = [matmul_rate(n, 10, dtype) for _ in range(rounds)]
        peaks[name] = {"n": n, "best": max(rates), "rounds": rates}
    return peaks


def matmul_rates(n: int = 2048) -> dict[str, float]:
    """One short sample of each dtype's matmul rate (taken between training steps)."""
    return {name: matmul_rate(n, 3, dtype) for name, dtype in PEAK_DTYPES.items()}
