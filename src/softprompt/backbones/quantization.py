"""bitsandbytes quantized loading for QLoRA (`method.lora.quantization_bit`).

Checked with bitsandbytes 0.50.2, torch 2.14.1, transformers 5.23.0, peft 0.21.2: 4-bit NF4
and 8-bit loading, forward and a LoRA backward all run on CPU (CUDA not checked). One CPU
pitfall: on CPUs with AVX512-BF16, a `Linear4bit` that runs in eval mode without grad
repacks its weight into an inference-only layout whose kernel has no backward, so LoRA
training after an evaluation gets no gradients; `keep_4bit_trainable` prevents that.
"""

from __future__ import annotations

import functools
import importlib.metadata

import torch
from transformers import BitsAndBytesConfig

QUANTIZATION_BITS = (4, 8)


def quantization_support(bits: int, device: str) -> str | None:
    """Whether `bits`-bit bitsandbytes loading works on a device type.

    Args:
        bits: 4 (NF4) or 8 (LLM.int8).
        device: A device or device type, e.g. "cpu", "cuda" or "cuda:1".

    Returns:
        None when it works, else a one-paragraph reason that says what to change.
    """
    return _probe(bits, torch.device(device).type)


# Cached: the answer cannot change within a process, and the config check and the model
# loader both ask.
@functools.lru_cache(maxsize=32)
def _probe(bits: int, device: str) -> str | None:
    try:
        version = importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        version = None
    installed = f"bitsandbytes {version}" if version else "bitsandbytes (not installed)"

    def reason(why: str, fix: str) -> str:
        return (
            f"method.lora.quantization_bit: {bits} cannot be used with {installed} on device "
            f"'{device}': {why}. {fix}, or set method.lora.quantization_bit: null to train "
            "LoRA on unquantized weights."
        )

    if bits not in QUANTIZATION_BITS:
        return reason("only 4 or 8 bits are supported", "Use 4 or 8")
    if version is None:
        return reason("the package is missing", "Install it with `pip install bitsandbytes`")
    if device not in ("cpu", "cuda"):
        return reason("only cpu and cuda are supported here", "Run on a CPU or a CUDA GPU")
    if device == "cuda" and not torch.cuda.is_available():
        return reason("torch sees no CUDA GPU", "Run on a machine with a CUDA GPU")
    # A quantized 64x64 matmul with a backward to its input exercises the same kernels a
    # LoRA step does, without loading a model: ~2 ms on CPU, plus the first import of
    # bitsandbytes (~2 s cold, as it imports torch._dynamo; from_pretrained pays it anyway).
    try:
        import bitsandbytes as bnb

        x = torch.randn(2, 64, device=device, requires_grad=True)
        if bits == 4:
            w, state = bnb.functional.quantize_4bit(
                torch.randn(64, 64, device=device), quant_type="nf4", compress_statistics=True
            )
            y = bnb.matmul_4bit(x, w.t(), quant_state=state)
        else:
            layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False).to(device)
            # float16 input: LLM.int8 casts to it anyway, and logs a warning when it must.
            y = layer(x.half())
        y.float().sum().backward()
        if x.grad is None or not torch.isfinite(x.grad).all():
            raise RuntimeError("the backward pass produced no finite gradient")
    except Exception as exc:  # any failure means "not usable here"; the message says why
        return reason(
            f"a {bits}-bit probe failed ({type(exc).__name__}: {exc})", "Run on a CUDA GPU"
        )
    return None


def bnb_config(bits: int, compute_dtype: torch.dtype) -> BitsAndBytesConfig:
    """The `quantization_config` for `from_pretrained`.

    Args:
        bits: 4 for NF4 with double quantization (QLoRA's recipe), 8 for LLM.int8.
        compute_dtype: dtype the 4-bit layers compute in (float32 or bfloat16 on CPU).

    Returns:
        A `transformers.BitsAndBytesConfig`.
    """
    if bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"method.lora.quantization_bit must be one of {QUANTIZATION_BITS}, got {bits}")


def keep_4bit_trainable(model: torch.nn.Module) -> int:
    """Stop CPU `Linear4bit` layers from switching to their inference-only weight layout.

    Call it after loading and before any evaluation; it also undoes a switch already made.

    Args:
        model: A model loaded with a 4-bit `bnb_config`.

    Returns:
        The number of `Linear4bit` layers seen.
    """
    try:
        import bitsandbytes as bnb
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
    except ImportError:
        return 0
    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            # bitsandbytes repacks only when this flag is set (AVX512-BF16 CPUs).
            module.support_avx512bf16_for_cpu = False
            state = getattr(module.weight, "quant_state", None)
            if state is not None and getattr(state, "packing_format_for_cpu", False):
                module.weight.data, module.weight.quant_state = (
                    _convert_weight_packed_for_cpu_inverse(module.weight.data, state)
                )
            count += 1
    return count
