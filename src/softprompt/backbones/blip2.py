"""BLIP-2 and InstructBLIP as vision-language backbones for soft prompts.

The image becomes `num_query_tokens` (Q) vectors in the language model's space: the
frozen vision encoder's patch features are read by the Q-Former's learned queries and
projected by `language_projection`. The language model (OPT / Llama / Vicuna through
`CausalLMBackbone`, T5 / Flan-T5 through `Seq2SeqBackbone`) is then called directly with
`inputs_embeds = [query outputs][text]` and the soft prompt spliced in before the image or
after it, so the text needs no `<image>` placeholder tokens and the model's own `forward`
(which requires them in transformers 5) is never called.

Everything before the first trainable parameter is cached per image with `FeatureCache`:
BLIP-2's query outputs depend on the image only; InstructBLIP's also depend on the
instruction (its Q-Former reads it), so they are cached per (image, instruction); with a
trainable Q-Former prompt (`qformer_prompt_tokens > 0`) only the vision encoder's output is
cached and the Q-Former runs every step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoProcessor,
    Blip2ForConditionalGeneration,
    InstructBlipForConditionalGeneration,
)

from softprompt.backbones.base import BACKBONES, BackboneBase, EncodeSettings, freeze
from softprompt.backbones.blip2_qformer import QFormerPrompt, query_prefix, vision_states
from softprompt.backbones.causal_lm import CausalLMBackbone
from softprompt.backbones.decoding import GREEDY, Decoding
from softprompt.backbones.feature_cache import FeatureCache, namespace_key
from softprompt.backbones.prompt_input import PromptInput
from softprompt.backbones.seq2seq import Seq2SeqBackbone
from softprompt.backbones.vision_base import VisionSettings, prompt_position, text_examples
from softprompt.data.images import load_image
from softprompt.data.records import VisionExample

QFORMER_PROMPT_KEY = "method.prompt_tuning.qformer_prompt_tokens"
STATE_PREFIX = "qformer_prompt."


class BlipModules(nn.Module):
    """The whole module: the frozen Hugging Face model and the trainable extras.

    Attributes:
        hf: the `Blip2ForConditionalGeneration` / `InstructBlipForConditionalGeneration`.
        qformer_prompt: the `QFormerPrompt`, or None.
    """

    def __init__(self, hf: nn.Module, qformer_prompt: QFormerPrompt | None) -> None:
        super().__init__()
        self.hf = hf
        self.qformer_prompt = qformer_prompt


class QueryTokenBackbone(BackboneBase):
    """Shared implementation of the BLIP-2 and InstructBLIP families.

    Args:
        model: the loaded Hugging Face model (frozen here).
        processor: its processor (`image_processor`, `tokenizer` and, for InstructBLIP,
            `qformer_tokenizer`).
        name_or_path: what the user configured (for messages and `describe`).
        settings: vision options (placement, Q-Former prompt, feature cache).
        identity: what identifies the weights in cache keys (defaults to the name).
    """

    family = ""
    model_type = ""  # config.model_type this family loads
    model_class: type = nn.Module
    reads_instruction = False  # whether the Q-Former reads the instruction text

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        name_or_path: str,
        settings: VisionSettings | None = None,
        identity: dict[str, Any] | None = None,
    ) -> None:
        settings = settings or VisionSettings()
        cfg = model.config
        self.name_or_path = name_or_path
        self.settings = settings
        self.placement = settings.placement
        self.num_query_tokens: int = cfg.num_query_tokens
        # Validates the placement name as well.
        self._position = prompt_position(settings.placement, self.num_query_tokens)
        n = settings.qformer_prompt_tokens
        if n < 0:
            raise ValueError(f"{QFORMER_PROMPT_KEY} = {n}: must be 0 or more")
        if n and not self.reads_instruction:
            raise ValueError(
                f"{QFORMER_PROMPT_KEY} = {n}: the {self.family} Q-Former reads only its learned "
                "queries, not the instruction, so there is nothing to put a Q-Former prompt in "
                "front of; set it to 0 (or use an InstructBLIP checkpoint, family instructblip)"
            )
        freeze(model)
        tokenizer = processor.tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        lm_cls = CausalLMBackbone if cfg.use_decoder_only_language_model else Seq2SeqBackbone
        self.lm: CausalLMBackbone | Seq2SeqBackbone = lm_cls(
            model.language_model, tokenizer, name_or_path
        )
        self.tokenizer = tokenizer
        self.image_processor = processor.image_processor
        self.qformer_tokenizer = getattr(processor, "qformer_tokenizer", None)
        qformer_prompt = None
        if n:
            qformer_prompt = QFormerPrompt(n, cfg.qformer_config.hidden_size)
            table = model.qformer.get_input_embeddings().weight.detach().float().cpu()
            qformer_prompt.initialize(table, _ordinary_ids(self.qformer_tokenizer, len(table)))
            qformer_prompt.to(model.query_tokens.device)
        self.model = BlipModules(model, qformer_prompt)
        self.cache = self._make_cache(identity or {"model": name_or_path})

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        display_name: str,
        dtype: torch.dtype,
        settings: VisionSettings | None = None,
        trust_remote_code: bool = False,
        quantization_config: Any = None,
    ) -> QueryTokenBackbone:
        """Load model and processor from a hub id or a `save_pretrained` directory."""
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        if config.model_type != cls.model_type:
            raise ValueError(
                f"model.name_or_path {display_name!r} is a {config.model_type!r} checkpoint; "
                f"family {cls.family!r} loads {cls.model_type!r} checkpoints"
            )
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        extra = {"quantization_config": quantization_config} if quantization_config else {}
        model = cls.model_class.from_pretrained(path, dtype=dtype, **extra)
        identity = _checkpoint_identity(path, config, dtype)
        return cls(model, processor, display_name, settings, identity)

    def _make_cache(self, identity: dict[str, Any]) -> FeatureCache:
        s = self.settings
        if s.feature_cache not in ("off", "memory", "disk"):
            raise ValueError(f"feature_cache {s.feature_cache!r}: expected off, memory or disk")
        if s.feature_cache == "disk" and not s.cache_dir:
            raise ValueError("data.feature_cache = disk needs a directory (data.cache_dir)")
        stage = "vision" if self.model.qformer_prompt is not None else "query_prefix"
        parts: dict[str, Any] = {
            "family": self.family,
            "checkpoint": identity,
            "stage": stage,
            "image_processor": self.image_processor.to_dict(),
        }
        return FeatureCache(
            namespace_key(**parts),
            disk_dir=s.cache_dir if s.feature_cache == "disk" else None,
            enabled=s.feature_cache != "off",
        )

    # ------------------------------------------------------------------ protocol

    @property
    def hidden_size(self) -> int:
        """D, the language model's embedding width."""
        return self.lm.hidden_size

    def word_embeddings(self) -> torch.Tensor:
        """The language model's input embedding matrix (V, D)."""
        return self.lm.word_embeddings()

    # LoRA goes into the whole model PEFT users wrap, `target_modules: auto` only into its
    # language model: the Q-Former's output is cached per image.
    lora_scope = "language_model"

    def peft_model(self) -> nn.Module:
        return self.model.hf

    def lm_model_type(self) -> str:
        return self.model.hf.config.text_config.model_type

    def trainable_modules(self) -> dict[str, nn.Module]:
        """`{"qformer_prompt": module}` with a Q-Former prompt, else `{}`."""
        qp = self.model.qformer_prompt
        return {} if qp is None else {"qformer_prompt": qp}

    def collate(
        self, examples: list[VisionExample], settings: EncodeSettings, with_targets: bool
    ) -> dict[str, Any]:
        """Language-model text tensors, `image_paths`, and the Q-Former's instruction.

        Returns:
            The text backbone's batch (`input_ids`, `attention_mask`, `labels` (B, T)),
            plus `image_paths` (list of B) and, for InstructBLIP, the instruction in the
            Q-Former's vocabulary: `qformer_input_ids` / `qformer_attention_mask` (B, Tq).
        """
        batch = self.lm.collate(text_examples(examples), settings, with_targets)
        batch["image_paths"] = [e.image_path for e in examples]
        if self.reads_instruction:
            texts = [e.text for e in examples]
            room = self.model.hf.qformer.config.max_position_embeddings
            qp = self.model.qformer_prompt
            room -= 0 if qp is None else qp.num_tokens
            enc = self.qformer_tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=min(settings.max_input_length, room),
                return_tensors="pt",
            )
            batch["qformer_input_ids"] = enc["input_ids"]
            batch["qformer_attention_mask"] = enc["attention_mask"]
        return batch

    def image_prefix(self, batch: dict[str, Any]) -> torch.Tensor:
        """The (B, Q, D) query outputs for the batch's images, in the LM's space.

        Frozen stages come from the feature cache; only misses load and run images. With a
        Q-Former prompt the Q-Former runs here with gradients reaching the prompt.
        """
        hf = self.model.hf
        paths: list[str] = batch["image_paths"]
        ids = batch.get("qformer_input_ids")
        mask = batch.get("qformer_attention_mask")
        device = hf.language_projection.weight.device
        qp = self.model.qformer_prompt
        if qp is None:

            def compute(rows: list[int]) -> torch.Tensor:
                pixels = self._pixels(paths, rows)
                sub_ids = None if ids is None else ids[rows].to(device)
                sub_mask = None if mask is None else mask[rows].to(device)
                with torch.no_grad(), _eval_mode(hf.vision_model, hf.qformer):
                    return query_prefix(hf, vision_states(hf, pixels), sub_ids, sub_mask)

            extras = _instruction_keys(ids, mask) if self.reads_instruction else None
            return self.cache.features(paths, compute, extras).to(device)

        def compute_states(rows: list[int]) -> torch.Tensor:
            with torch.no_grad(), _eval_mode(hf.vision_model):
                return vision_states(hf, self._pixels(paths, rows))

        states = self.cache.features(paths, compute_states).to(device)
        return query_prefix(hf, states, ids.to(device), mask.to(device), qp(len(paths)))

    def _pixels(self, paths: list[str], rows: list[int]) -> torch.Tensor:
        """(len(rows), 3, S, S) preprocessed images for the given rows."""
        images = [load_image(paths[i]) for i in rows]
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        emb = self.model.hf.vision_model.embeddings.patch_embedding.weight
        return pixels.to(emb.device, emb.dtype)

    def loss_sum(
        self, batch: dict[str, Any], prompt: PromptInput | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed cross-entropy over target tokens and their count.

        Args:
            batch: from `collate(..., with_targets=True)`, on the model's device.
            prompt: the batch's soft prompts, or None.
        """
        prefix = self.image_prefix(batch)
        return self.lm.loss_sum(batch, prompt, prefix=prefix, prompt_position=self._position)

    def sequence_logprobs(self, batch: dict[str, Any], prompt: PromptInput | None) -> torch.Tensor:
        """(B,) summed log-probability of each row's target tokens (option scoring)."""
        prefix = self.image_prefix(batch)
        return self.lm.sequence_logprobs(
            batch, prompt, prefix=prefix, prompt_position=self._position
        )

    @torch.no_grad()
    def generate(
        self,
        batch: dict[str, Any],
        prompt: PromptInput | None,
        max_new_tokens: int,
        decoding: Decoding = GREEDY,
    ) -> list[str]:
        """Generation after `[image queries][text]` with the prompt in place.

        Args:
            batch: from `collate(..., with_targets=False)` (left-padded for causal LMs).
            prompt: the batch's soft prompts, or None.
            max_new_tokens: generation budget.
            decoding: sampling settings and a step watcher (greedy by default).

        Returns:
            The new text of each row, stripped.
        """
        prefix = self.image_prefix(batch)
        return self.lm.generate(batch, prompt, max_new_tokens, prefix, self._position, decoding)

    # ------------------------------------------------------------------ saving

    def state_for_save(self) -> dict[str, torch.Tensor]:
        """Trainable extras to store with the soft prompt (`qformer_prompt.weight` (N, H))."""
        qp = self.model.qformer_prompt
        if qp is None:
            return {}
        return {STATE_PREFIX + k: v.detach().cpu() for k, v in qp.state_dict().items()}

    def load_saved_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what `state_for_save` returned (other keys are ignored).

        Raises:
            ValueError: the saved Q-Former prompt is missing, unexpected or of another shape.
        """
        saved = {
            k[len(STATE_PREFIX) :]: v for k, v in tensors.items() if k.startswith(STATE_PREFIX)
        }
        qp = self.model.qformer_prompt
        if qp is None:
            if saved:
                shape = tuple(saved.get("weight", next(iter(saved.values()))).shape)
                raise ValueError(
                    f"the saved prompt has a Q-Former prompt ({STATE_PREFIX}weight {shape}) but "
                    f"this backbone was built with {QFORMER_PROMPT_KEY} = 0; set it to {shape[0]}"
                )
            return
        expected = qp.state_dict()
        unknown = sorted(set(saved) - set(expected))
        if unknown:
            raise ValueError(f"unexpected saved tensors: {[STATE_PREFIX + k for k in unknown]}")
        if "weight" not in saved:
            raise ValueError(
                f"the saved prompt has no {STATE_PREFIX}weight (trained without a Q-Former "
                f"prompt?) but this backbone has {QFORMER_PROMPT_KEY} = {qp.num_tokens}"
            )
        weight = saved["weight"]
        if tuple(weight.shape) != tuple(qp.weight.shape):
            raise ValueError(
                f"{STATE_PREFIX}weight: saved shape {tuple(weight.shape)}, this backbone expects "
                f"{tuple(qp.weight.shape)} ({QFORMER_PROMPT_KEY} x Q-Former hidden size); "
                f"set {QFORMER_PROMPT_KEY} = {weight.shape[0]} and use the checkpoint the "
                "prompt was trained on"
            )
        with torch.no_grad():
            qp.weight.copy_(weight.to(qp.weight.device, qp.weight.dtype))

    def describe(self) -> dict[str, Any]:
        """What a saved prompt records about the backbone it was trained on."""
        cfg = self.model.hf.config
        qp = self.model.qformer_prompt
        return {
            "family": self.family,
            "model": self.name_or_path,
            "lm_family": self.lm.family,
            "lm_model_type": cfg.text_config.model_type,
            "num_query_tokens": self.num_query_tokens,
            "placement": self.placement,
            "qformer_prompt_tokens": 0 if qp is None else qp.num_tokens,
            "hidden_size": self.hidden_size,
        }


@BACKBONES.register("blip2")
class Blip2Backbone(QueryTokenBackbone):
    """BLIP-2: image-only Q-Former; query outputs cached per image."""

    family = "blip2"
    model_type = "blip-2"
    model_class = Blip2ForConditionalGeneration
    reads_instruction = False


@BACKBONES.register("instructblip")
class InstructBlipBackbone(QueryTokenBackbone):
    """InstructBLIP: the Q-Former also reads the instruction; cached per (image, instruction)."""

    family = "instructblip"
    model_type = "instructblip"
    model_class = InstructBlipForConditionalGeneration
    reads_instruction = True


# ----------------------------------------------------------------------------- helpers


@contextmanager
def _eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Run frozen stages without dropout: a cached value must not be one dropout sample."""
    saved = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, training in saved:
            m.training = training


def _instruction_keys(ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Per-row cache-key parts: the instruction token ids the Q-Former actually reads.

    Ids rather than text, so truncation and the tokenizer are part of the key too.
    """
    return [",".join(map(str, row[m.bool()].tolist())) for row, m in zip(ids, mask, strict=True)]


def _ordinary_ids(tokenizer: Any, vocab_size: int) -> list[int]:
    """Token ids below `vocab_size` that are not special ([CLS], [PAD], ...)."""
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    return [i for i in range(vocab_size) if i not in special]


def _checkpoint_identity(path: str, config: Any, dtype: torch.dtype) -> dict[str, Any]:
    """Name, hub commit and (for directories) weight files' sizes and mtimes, plus dtype.

    Re-saving different weights into the same directory changes the key, so the cache
    never serves features of the old weights.
    """
    identity: dict[str, Any] = {
        "model": path,
        "commit": getattr(config, "_commit_hash", None),
        "dtype": str(dtype),
    }
    directory = Path(path)
    if directory.is_dir():
        identity["model"] = str(directory.resolve())
        identity["weights"] = sorted(
            [f.name, f.stat().st_size, f.stat().st_mtime_ns]
            for f in directory.iterdir()
            if f.suffix in (".safetensors", ".bin")
        )
    return identity
