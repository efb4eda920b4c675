"""Tiny checkpoints built from configs (random weights, tokenizers trained here).

Each builder writes a model and its tokenizer or processor with `save_pretrained` into a
directory, so the tests load them back through the same `from_pretrained` code a user runs
against a hub checkpoint (`gpt2`, `Salesforce/blip2-opt-2.7b`,
`Salesforce/instructblip-flan-t5-xl`). conftest.py builds each once per session.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
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
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    GPT2Config,
    GPT2LMHeadModel,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    T5Config,
    T5ForConditionalGeneration,
)

TEXT_KINDS = ("gpt2", "llama", "t5")

WORDS = (
    "the a cat dog bird sat on mat ran fast slow red blue green big small house tree "
    "summary of paper we propose method results show improve model data task learn "
    "one two three four five yes no animal color size what is it"
).split()


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    """`n` random sentences of the toy vocabulary (what the tokenizers are trained on)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def train_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the toy corpus (vocab ~200)."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<pad>", "</s>", "<s>"]
    trainer = trainers.BpeTrainer(
        vocab_size=240,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    if kind == "t5":
        # T5 appends </s> to every input and target.
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
        )
    elif kind == "llama":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", bos_token="<s>"
    )


# Weights are drawn wider than the usual 0.02 (initializer_range=0.3) so that a random
# tiny model reacts to its input at all and a soft prompt can learn the toy task.
def build_text_model(kind: str, directory: Path) -> Path:
    """Write a tiny `kind` (one of `TEXT_KINDS`) checkpoint + tokenizer; returns its directory."""
    torch.manual_seed(0)
    tokenizer = train_tokenizer(kind)
    vocab = len(tokenizer)
    pad, eos, bos = (tokenizer.convert_tokens_to_ids(t) for t in ("<pad>", "</s>", "<s>"))
    if kind == "gpt2":
        config = GPT2Config(
            vocab_size=vocab,
            n_positions=256,
            n_embd=32,
            n_layer=2,
            n_head=2,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=pad,
            initializer_range=0.3,
        )
        model = GPT2LMHeadModel(config)
    elif kind == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=pad,
            tie_word_embeddings=False,
            initializer_range=0.3,
        )
        model = LlamaForCausalLM(config)
    elif kind == "t5":
        config = T5Config(
            vocab_size=vocab,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            pad_token_id=pad,
            eos_token_id=eos,
            decoder_start_token_id=pad,
            dropout_rate=0.0,
        )
        model = T5ForConditionalGeneration(config)
    else:
        raise ValueError(kind)
    model.generation_config.pad_token_id = pad
    model.generation_config.eos_token_id = eos
    out = directory / f"tiny-{kind}"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


IMAGE_SIZE = 32
NUM_QUERY_TOKENS = 4
KINDS = ("blip2-opt", "blip2-t5", "instructblip-opt", "instructblip-t5")

# Drawn wider than the usual 0.02 so a random tiny model reacts to its input at all
# (the same reason the text models use 0.3).
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


def tiny_clip_vision_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=32,
        image_size=32,
        patch_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )


def tiny_clip_processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def build_tiny_clip(directory: Path) -> Path:
    """A tiny CLIP vision tower + image processor saved like a hub checkpoint."""
    torch.manual_seed(0)
    out = directory / "tiny-clip-vision"
    CLIPVisionModel(tiny_clip_vision_config()).save_pretrained(out)
    tiny_clip_processor().save_pretrained(out)
    return out


CONTRASTIVE_KINDS = ("clip", "siglip")
_TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 2}  # fmt: skip


def contrastive_model(kind: str, seed: int = 0):
    """(a tiny CLIPModel or SiglipModel, its tokenizer, its image processor).

    CLIP's tokenizer keeps spaces out of its tokens and wraps a text in start and end
    tokens (here BERT's [CLS] / [SEP]); SigLIP's appends </s> (here a T5 tokenizer).
    """
    vision = {**_TOWER, "image_size": 32, "patch_size": 8}
    torch.manual_seed(seed)
    if kind == "clip":
        tokenizer = wordpiece_tokenizer()
        ids = {n: tokenizer.convert_tokens_to_ids(n) for n in ("[CLS]", "[SEP]", "[PAD]")}
        text = {**_TOWER, "vocab_size": len(tokenizer), "max_position_embeddings": 32,
                "bos_token_id": ids["[CLS]"], "eos_token_id": ids["[SEP]"],
                "pad_token_id": ids["[PAD]"]}  # fmt: skip
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24))
        return model, tokenizer, tiny_clip_processor()
    tokenizer = train_tokenizer("t5")
    text = {**_TOWER, "vocab_size": len(tokenizer), "max_position_embeddings": 32,
            "projection_size": 32}  # fmt: skip
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
    processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    return model, tokenizer, processor


def build_contrastive(kind: str, directory: Path, seed: int = 0) -> Path:
    """A tiny CLIP or SigLIP with tokenizer and image processor, saved like a hub model."""
    out = directory / f"tiny-{kind}-{seed}"
    model, tokenizer, processor = contrastive_model(kind, seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    processor.save_pretrained(out)
    return out
