"""Tiny BLIP-2 / InstructBLIP checkpoints built from configs (random weights).

Each builder writes a model and its processor with `save_pretrained` into a directory, so
the tests load them back through the same `from_pretrained` code a user runs against
`Salesforce/blip2-opt-2.7b` or `Salesforce/instructblip-flan-t5-xl`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import corpus, train_tokenizer
from PIL import Image
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    BlipImageProcessor,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
    PreTrainedTokenizerFast,
)

IMAGE_SIZE = 32
NUM_QUERY_TOKENS = 4
KINDS = ("blip2-opt", "blip2-t5", "instructblip-opt", "instructblip-t5")

# Drawn wider than the usual 0.02 so a random tiny model reacts to its input at all
# (the same reason conftest uses 0.3 for the text models).
INIT_RANGE = 0.3


def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    """A BERT-style uncased WordPiece tokenizer, like InstructBLIP's Q-Former tokenizer."""
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=special)
    tok.train_from_iterator(corpus(), trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def _text_config(lm: str, tokenizer: PreTrainedTokenizerFast) -> dict:
    pad, eos, bos = (tokenizer.convert_tokens_to_ids(t) for t in ("<pad>", "</s>", "<s>"))
    if lm == "opt":
        return {
            "model_type": "opt",
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "ffn_dim": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "word_embed_proj_dim": 32,
            "max_position_embeddings": 128,
            "pad_token_id": pad,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "dropout": 0.0,
            "init_std": INIT_RANGE,
        }
    return {
        "model_type": "t5",
        "vocab_size": len(tokenizer),
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 64,
        "num_layers": 2,
        "num_decoder_layers": 2,
        "num_heads": 4,
        "pad_token_id": pad,
        "eos_token_id": eos,
        "decoder_start_token_id": pad,
        "dropout_rate": 0.0,
    }


def build_vlm(kind: str, directory: Path) -> Path:
    """Write a tiny `kind` checkpoint (one of `KINDS`) + processor; returns its directory."""
    family, lm = kind.split("-")
    torch.manual_seed(0)
    tokenizer = train_tokenizer("t5" if lm == "t5" else "gpt2")
    image_processor = BlipImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_convert_rgb=True
    )
    # The processor adds the "<image>" placeholder token to the tokenizer, so it is built
    # first and the LM's vocabulary sized after it (as in the real checkpoints).
    if family == "blip2":
        processor = Blip2Processor(image_processor, tokenizer, num_query_tokens=NUM_QUERY_TOKENS)
    else:
        qformer_tokenizer = wordpiece_tokenizer()
        processor = InstructBlipProcessor(
            image_processor, tokenizer, qformer_tokenizer, num_query_tokens=NUM_QUERY_TOKENS
        )
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": IMAGE_SIZE,
        "patch_size": 8,
        "initializer_range": INIT_RANGE,
    }
    qformer = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "cross_attention_frequency": 1,
        "encoder_hidden_size": 32,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": INIT_RANGE,
    }
    common = {
        "vision_config": vision,
        "text_config": _text_config(lm, tokenizer),
        "num_query_tokens": NUM_QUERY_TOKENS,
        "image_token_index": tokenizer.convert_tokens_to_ids("<image>"),
        "initializer_range": INIT_RANGE,
    }
    if family == "blip2":
        model = Blip2ForConditionalGeneration(Blip2Config(qformer_config=qformer, **common))
    else:
        qformer_tok = processor.qformer_tokenizer
        qformer.update(vocab_size=len(qformer_tok), pad_token_id=qformer_tok.pad_token_id)
        model = InstructBlipForConditionalGeneration(
            InstructBlipConfig(qformer_config=qformer, **common)
        )
    with torch.no_grad():
        # Upstream initialises the query tokens to zeros (the checkpoint fills them);
        # distinct queries make the tiny model's query outputs differ from each other.
        model.query_tokens.normal_(0.0, 1.0)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    out = directory / f"tiny-{kind}"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_all(directory: Path) -> dict[str, Path]:
    """All four tiny checkpoints, by kind."""
    return {kind: build_vlm(kind, directory) for kind in KINDS}


COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def colour_images(directory: Path, per_colour: int = 3) -> dict[str, list[Path]]:
    """Small solid-colour PNGs with a little per-image noise; colour name -> paths."""
    directory.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    out: dict[str, list[Path]] = {}
    for name, rgb in COLOURS.items():
        out[name] = []
        for i in range(per_colour):
            base = torch.tensor(rgb, dtype=torch.float32).view(1, 1, 3)
            noise = torch.randint(-20, 21, (IMAGE_SIZE, IMAGE_SIZE, 3), generator=gen)
            pixels = (base + noise).clamp(0, 255).to(torch.uint8).numpy()
            path = directory / f"{name}{i}.png"
            Image.fromarray(pixels).save(path)
            out[name].append(path)
    return out


def tiny_clip_vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=32,
        image_size=32,
        patch_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )


def tiny_clip_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def build_tiny_clip(directory: Path) -> Path:
    """A tiny CLIP vision tower + image processor saved like a hub checkpoint."""
    from transformers import CLIPVisionModel

    torch.manual_seed(0)
    out = directory / "tiny-clip-vision"
    CLIPVisionModel(tiny_clip_vision_config()).save_pretrained(out)
    tiny_clip_processor().save_pretrained(out)
    return out
