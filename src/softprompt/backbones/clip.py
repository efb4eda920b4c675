"""CLIP and SigLIP as a backbone family: images classified by comparing them with texts.

A contrastive model has no language model to put a prompt in front of: it scores an
image against a text by the cosine of their features times its logit scale. Classifying
means scoring the image against every class's text and taking the softmax, so:

- option scoring (`sequence_logprobs`) returns each (image, option text) pair's logit, and
  the evaluator's softmax over a row's options is exactly CLIP's class probabilities;
- the training loss is the cross-entropy over the bound task's classes (`bind_task`).

The whole image side is frozen, so image features are computed once per image and served
from a `FeatureCache`. The text side is the zero-shot template(s) (`task.templates`,
averaged as CLIP does for ImageNet), or learned class prompts (CoOp, CoCoOp) or a linear
probe's weights when a tuner attaches them (`use_class_prompts`, `use_head`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image
from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPModel,
    SiglipImageProcessor,
    SiglipModel,
)

from softprompt.backbones.base import BACKBONES, BackboneBase, EncodeSettings
from softprompt.backbones.clip_text import ContrastiveModel, class_logits, token_embedding
from softprompt.backbones.decoding import GREEDY, Decoding
from softprompt.backbones.embedded import cache_dir
from softprompt.backbones.feature_cache import FeatureCache, namespace_key
from softprompt.backbones.prompt_input import PromptInput
from softprompt.backbones.splice import IGNORE_INDEX
from softprompt.backbones.vision_base import VisionSettings
from softprompt.backbones.vision_encoders import weights_fingerprint
from softprompt.data.images import load_image
from softprompt.data.records import VisionExample
from softprompt.errors import UserError

logger = logging.getLogger("softprompt")

MODELS = {"clip": CLIPModel, "siglip": SiglipModel}
DEFAULT_TEMPLATES = ("a photo of a {}.",)
ENCODE_BATCH_SIZE = 64  # images per image-tower forward on cache misses


class ClassTexts(Protocol):
    """What a tuner attaches to score classes by learned prompts (CoOp, CoCoOp)."""

    def class_text_features(
        self, model: ContrastiveModel, names: tuple[str, ...], image_features: torch.Tensor
    ) -> torch.Tensor:
        """(C, E) features of each class's prompt, or (U, C, E): one set per image."""
        ...


class ClassHead(Protocol):
    """What a linear probe attaches: logits straight from the image features."""

    classes: tuple[str, ...]

    def __call__(self, image_features: torch.Tensor) -> torch.Tensor: ...


class ClipUseError(UserError):
    """A request a contrastive model cannot answer (generation, a soft prompt)."""


@dataclass
class BoundTask:
    """The task the model classifies for: class words (label order) and templates."""

    class_texts: tuple[str, ...] = ()
    templates: tuple[str, ...] = DEFAULT_TEMPLATES


@BACKBONES.register("clip")
class ClipBackbone(BackboneBase):
    """A frozen CLIPModel or SiglipModel (see the module docstring).

    Attributes:
        cache: `FeatureCache` of projected image features (hits / misses for benchmarks).
        bound: the classes and templates of the task it is bound to.
    """

    family = "clip"
    model_type = "clip"  # also "siglip": `FamilySpec.model_types` lists both
    labels_in_input = False
    placement = "none"

    def __init__(self, model: ContrastiveModel, tokenizer, processor, name_or_path: str,
                 settings: VisionSettings | None = None) -> None:  # fmt: skip
        settings = settings or VisionSettings()
        self.model = model.requires_grad_(False).eval()
        self.tokenizer, self.processor = tokenizer, processor
        self.name_or_path = name_or_path
        self.lm = self
        self.bound = BoundTask()
        self.class_prompts: ClassTexts | None = None
        self.head: ClassHead | None = None
        self._zero_shot: dict[tuple, torch.Tensor] = {}
        namespace = namespace_key(
            model=name_or_path,
            weights=weights_fingerprint(model.vision_model),
            preprocessing=repr(processor.to_dict()),
            dtype=str(next(model.parameters()).dtype),
        )
        disk = None
        if settings.feature_cache == "disk":
            disk = settings.cache_dir or cache_dir() / "features"
        self.cache = FeatureCache(namespace, disk_dir=disk,
                                  enabled=settings.feature_cache != "off")  # fmt: skip

    @classmethod
    def from_pretrained(cls, path: str, display_name: str, dtype: torch.dtype,
                        settings: VisionSettings | None = None,
                        trust_remote_code: bool = False) -> ClipBackbone:  # fmt: skip
        """A CLIP or SigLIP checkpoint (hub id or `save_pretrained` directory)."""
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        if config.model_type not in MODELS:
            raise ValueError(
                f"{display_name}: model type {config.model_type!r} is not CLIP or SigLIP"
            )
        model = MODELS[config.model_type].from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(model, tokenizer, image_processor(path, model), display_name, settings)

    # -- what every backbone has ------------------------------------------------------

    @property
    def hidden_size(self) -> int:
        return self.model.config.text_config.hidden_size

    def word_embeddings(self) -> torch.Tensor:
        return token_embedding(self.model).weight

    @property
    def prompt_cache(self) -> None:
        return None

    def peft_model(self) -> nn.Module:
        return self.model

    def peft_base_name(self) -> str:
        return self.name_or_path

    def lm_model_type(self) -> str:
        return self.model.config.model_type

    def describe(self) -> dict[str, Any]:
        config = self.model.config
        return {
            "family": self.family,
            "model": self.name_or_path,
            "model_type": config.model_type,
            "hidden_size": self.hidden_size,
            "projection_dim": self.feature_dim,
        }

    @property
    def feature_dim(self) -> int:
        """Width of the image and text features the logits compare."""
        config = self.model.config
        if isinstance(self.model, SiglipModel):
            return config.text_config.projection_size
        return config.projection_dim

    # -- the task, and what tuners attach ---------------------------------------------

    def bind_task(self, task) -> None:
        """Classify for `task` from now on: its class words (label order) and templates."""
        if task.type != "classify":
            raise ClipUseError(
                f"a {self.model.config.model_type} model classifies images (task.type: "
                f"classify); this task is {task.type!r}"
            )
        templates = tuple(task.templates or DEFAULT_TEMPLATES)
        self.bound = BoundTask(tuple(task.options() or ()), templates)

    def use_class_prompts(self, prompts: ClassTexts | None) -> None:
        """Score classes by learned prompts (None: by the templates again)."""
        self.class_prompts = prompts

    def use_head(self, head: ClassHead | None) -> None:
        """Score classes by a linear probe on the image features (None: by texts)."""
        self.head = head

    # -- images -----------------------------------------------------------------------

    @torch.no_grad()
    def _encode(self, paths: list[str]) -> torch.Tensor:
        param = next(self.model.parameters())
        out = []
        for start in range(0, len(paths), ENCODE_BATCH_SIZE):
            images = [load_image(p) for p in paths[start : start + ENCODE_BATCH_SIZE]]
            out.append(self.encode_images(images).cpu())
        return torch.cat(out).to(param.dtype)

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        """(B, E) projected features of RGB images (the image tower, run now)."""
        param = next(self.model.parameters())
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        features = self.model.get_image_features(pixel_values=pixels.to(param.device, param.dtype))
        return features if isinstance(features, torch.Tensor) else features.pooler_output

    def image_features(self, image_paths: list[str]) -> torch.Tensor:
        """(B, E) frozen image features; the image tower runs only on cache misses."""
        return self.cache.features(
            image_paths, lambda rows: self._encode([image_paths[i] for i in rows])
        )

    # -- texts ------------------------------------------------------------------------

    @torch.no_grad()
    def template_features(self, names: tuple[str, ...]) -> torch.Tensor:
        """(C, E) zero-shot class features: each template's features normalised, then
        averaged and normalised again (CLIP's prompt ensembling)."""
        key = (names, self.bound.templates)
        if key not in self._zero_shot:
            param = next(self.model.parameters())
            total = None
            for template in self.bound.templates:
                texts = [template.format(name.replace("_", " ")) for name in names]
                encoded = self.tokenizer(texts, return_tensors="pt", **self._padding())
                out = self.model.get_text_features(input_ids=encoded.input_ids.to(param.device))
                out = out if isinstance(out, torch.Tensor) else out.pooler_output
                out = out / out.norm(dim=-1, keepdim=True)
                total = out if total is None else total + out
            mean = total / len(self.bound.templates)
            self._zero_shot[key] = mean / mean.norm(dim=-1, keepdim=True)
        return self._zero_shot[key]

    def _padding(self) -> dict[str, Any]:
        """SigLIP reads its last position: prompts are padded to its trained length."""
        if isinstance(self.model, SiglipModel):
            length = self.model.config.text_config.max_position_embeddings
            return {"padding": "max_length", "max_length": length, "truncation": True}
        return {"padding": True, "truncation": True}

    def pad_length(self) -> int | None:
        """The length class prompts are padded to (None: the longest prompt)."""
        return self._padding().get("max_length")

    # -- scores -----------------------------------------------------------------------

    def score_matrix(self, image_features: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
        """(U, C) logits of U images against C class texts, by what scores classes now."""
        param = next(self.model.parameters())
        images = image_features.to(param.device, param.dtype)
        if self.head is not None:
            columns = [_index(self.head.classes, name, "the linear probe") for name in names]
            return self.head(images)[:, columns]
        if self.class_prompts is None:
            return class_logits(self.model, images, self.template_features(names))
        texts = self.class_prompts.class_text_features(self.model, names, images)
        if texts.dim() == 2:
            return class_logits(self.model, images, texts)
        # One set of class features per image (CoCoOp): each image against its own.
        rows = [class_logits(self.model, images[i : i + 1], texts[i]) for i in range(len(images))]
        return torch.cat(rows)

    def collate(self, examples: list[VisionExample], settings: EncodeSettings,
                with_targets: bool) -> dict[str, Any]:  # fmt: skip
        """Image paths, each row's target words (stripped: a class's text) and, with
        targets, its class among the bound task's (`IGNORE_INDEX`: none of them)."""
        texts = [(e.target or "").strip() if with_targets else "" for e in examples]
        batch: dict[str, Any] = {"image_paths": [e.image_path for e in examples], "texts": texts}
        if with_targets:
            names = self.bound.class_texts
            batch["labels"] = torch.tensor(
                [names.index(t) if t in names else IGNORE_INDEX for t in texts]
            )
        return batch

    def loss_sum(self, batch: dict[str, Any], prompt: PromptInput | None):
        """Summed cross-entropy over the bound task's classes, and the labelled rows."""
        self._refuse_prompt(prompt)
        names = self.bound.class_texts
        if not names:
            raise ClipUseError("the model is bound to no classes: call bind_task first")
        logits = self.score_matrix(self.image_features(batch["image_paths"]), names)
        labels = batch["labels"].to(logits.device)
        loss = nn.functional.cross_entropy(
            logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum"
        )
        return loss, (labels != IGNORE_INDEX).sum()

    def sequence_logprobs(self, batch: dict[str, Any], prompt: PromptInput | None):
        """(B,) logit of each (image, text) row; a softmax over one image's options is
        CLIP's class probability. Each distinct image and text is scored once."""
        self._refuse_prompt(prompt)
        paths, texts = batch["image_paths"], batch["texts"]
        row_of = {p: i for i, p in enumerate(dict.fromkeys(paths))}
        col_of = {t: i for i, t in enumerate(dict.fromkeys(texts))}
        scores = self.score_matrix(self.image_features(list(row_of)), tuple(col_of))
        rows = torch.tensor([row_of[p] for p in paths])
        cols = torch.tensor([col_of[t] for t in texts])
        return scores[rows.to(scores.device), cols.to(scores.device)]

    def generate(self, batch: dict[str, Any], prompt: PromptInput | None, max_new_tokens: int,
                 decoding: Decoding = GREEDY) -> list[str]:  # fmt: skip
        raise ClipUseError(
            f"{self.name_or_path} is a contrastive model: it scores images against class "
            "texts (task.type: classify) and generates no text"
        )

    def _refuse_prompt(self, prompt: PromptInput | None) -> None:
        if prompt is not None:
            raise ClipUseError(
                "a soft prompt goes before a language model's input; CLIP and SigLIP learn "
                "class prompts instead: enable method.coop or method.cocoop"
            )


def image_processor(path: str, model: ContrastiveModel):
    """The checkpoint's image processor, or one built from the vision config when the
    directory has none (a model saved without its processor)."""
    try:
        return AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError):
        size = model.config.vision_config.image_size
        logger.warning("%s has no image processor: resizing to %d px, CLIP's mean/std", path, size)
        if isinstance(model, SiglipModel):
            return SiglipImageProcessor(size={"height": size, "width": size})
        return CLIPImageProcessor(size={"shortest_edge": size},
                                  crop_size={"height": size, "width": size})  # fmt: skip


def _index(classes: tuple[str, ...], name: str, what: str) -> int:
    if name not in classes:
        raise ClipUseError(
            f"{what} was trained for the classes {', '.join(classes)}; {name!r} is not one"
        )
    return classes.index(name)
