"""QLoRA loading through bitsandbytes: a tiny Llama loaded in 4/8 bits on CPU, then LoRA."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from softprompt.backbones.quantization import (
    bnb_config,
    keep_4bit_trainable,
    quantization_support,
)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A random tiny Llama saved to disk, so it loads through `from_pretrained`.

    hidden_size 64 so the 4-bit blocks (64 values each) fill whole rows.
    """
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    out = tmp_path_factory.mktemp("qmodel") / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def _lora_step(model) -> dict[str, torch.Tensor]:
    """One LoRA backward step; returns the LoRA parameters' gradients."""
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    # init_lora_weights=False: random A and B, so both get a gradient on the first step
    # (the default zero B would leave A's gradient at exactly zero).
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,
    )
    model = get_peft_model(model, lora)
    model.train()
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    out = model(input_ids=ids, labels=ids)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if "lora_" in n}


def _assert_lora_grads(grads: dict[str, torch.Tensor]) -> None:
    assert len(grads) == 8  # 2 layers x (q_proj, v_proj) x (A, B)
    for name, grad in grads.items():
        assert grad is not None, name
        assert torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, name


def test_bnb_config_fields():
    four = bnb_config(4, torch.bfloat16)
    assert four.load_in_4bit and not four.load_in_8bit
    assert four.bnb_4bit_quant_type == "nf4"
    assert four.bnb_4bit_use_double_quant
    assert four.bnb_4bit_compute_dtype == torch.bfloat16
    eight = bnb_config(8, torch.float32)
    assert eight.load_in_8bit and not eight.load_in_4bit
    with pytest.raises(ValueError, match="quantization_bit"):
        bnb_config(3, torch.float32)


def test_unsupported_requests_explain_themselves():
    message = quantization_support(3, "cpu")
    assert message and "method.lora.quantization_bit" in message and "3" in message
    message = quantization_support(4, "mps")
    assert message and "method.lora.quantization_bit" in message and "mps" in message
    if not torch.cuda.is_available():
        message = quantization_support(4, "cuda:0")
        assert message and "method.lora.quantization_bit: 4" in message and "cuda" in message
        assert "quantization_bit: null" in message


@pytest.mark.parametrize("bits", [4, 8])
def test_cpu_quantized_load_forward_and_lora_backward(tiny_llama, bits, one_thread):
    reason = quantization_support(bits, "cpu")
    if reason is not None:
        # No usable bitsandbytes here: the message must tell the user which key to change.
        assert "method.lora.quantization_bit" in reason and str(bits) in reason
        return
    import bitsandbytes as bnb

    model = AutoModelForCausalLM.from_pretrained(
        tiny_llama, quantization_config=bnb_config(bits, torch.float32)
    )
    layer_type = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    quantized = [m for m in model.modules() if isinstance(m, layer_type)]
    assert len(quantized) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    if bits == 4:
        assert keep_4bit_trainable(model) == len(quantized)
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():  # eval-mode forward first, as an evaluation before training does
        logits = model(input_ids=ids).logits
    assert logits.shape == (2, 12, 256) and torch.isfinite(logits).all()
    _assert_lora_grads(_lora_step(model))


def test_keep_4bit_trainable_undoes_cpu_inference_packing(tiny_llama, one_thread):
    if quantization_support(4, "cpu") is not None:
        pytest.skip("4-bit bitsandbytes is not usable on this CPU")
    import bitsandbytes as bnb

    model = AutoModelForCausalLM.from_pretrained(
        tiny_llama, quantization_config=bnb_config(4, torch.float32)
    )
    layer = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    with torch.no_grad():
        model(input_ids=torch.randint(0, 256, (1, 8)))
    # Only AVX512-BF16 CPUs repack; elsewhere the weights are already trainable.
    if not getattr(layer.weight.quant_state, "packing_format_for_cpu", False):
        pytest.skip("this CPU does not repack 4-bit weights for inference")
    keep_4bit_trainable(model)
    assert not layer.weight.quant_state.packing_format_for_cpu
    _assert_lora_grads(_lora_step(model))
