"""The sections of a run config (`model`, `method`, `data`, `task`, `training`).

`softprompt.config.run` assembles them into `RunConfig` and loads YAML into it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    create_model,
    field_validator,
    model_validator,
)

from softprompt.backbones.spec import family_names
from softprompt.tuners.spec import TunerSpec, section_specs

# The families `model.family` accepts, from the family table (backbones/spec.py).
FamilyName = Literal[family_names()]  # type: ignore[valid-type]


class _Section(BaseModel):
    # inf/nan pass `gt=0` checks and then poison training; refuse them up front.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Section):
    name_or_path: str = Field(
        "embedded:smollm2-135m",
        description="Hugging Face hub id, a local directory written by save_pretrained, or an "
        "embedded model (`embedded:smollm2-135m`).",
    )
    family: FamilyName | None = Field(
        None, description="Backbone family; detected from the model's config when omitted."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Dtype the frozen backbone is loaded in."
    )
    trust_remote_code: bool = Field(False, description="Passed to from_pretrained.")
    vision_encoder: str | None = Field(
        None,
        description="Composed VLM: vision encoder (hub id or directory of a transformers "
        "vision model such as CLIPVisionModel/SiglipVisionModel/ViT, `timm:<name>`, or "
        "`embedded:effnet-lite0`). Setting it makes the family `composed`.",
    )
    language_model: str | None = Field(
        None, description="Composed VLM: the causal LM (hub id, directory or embedded name)."
    )
    projection: Literal["linear", "mlp"] = Field(
        "mlp", description="Composed VLM: vision-to-LM projection (mlp = 2 layers, GELU)."
    )
    train_projection: bool = Field(
        True, description="Composed VLM: train the projection together with the prompt."
    )
    num_image_tokens: int | None = Field(
        None, ge=1, description="Composed VLM: pool the image features to this many tokens."
    )


class _MethodSections(_Section):
    """The `method` section: one subsection per registered method (tuners/*/spec.py)."""

    @model_validator(mode="after")
    def _methods_fit_together(self) -> _MethodSections:
        for spec in METHOD_SPECS:
            for other in spec.replaces if getattr(self, spec.name).enabled else ():
                section = getattr(self, other)
                if "enabled" not in section.model_fields_set:
                    section.enabled = False
        for spec in METHOD_SPECS:
            for other, why in spec.conflicts:
                if getattr(self, spec.name).enabled and getattr(self, other).enabled:
                    raise ValueError(
                        f"method.{spec.name} and method.{other} are both enabled: {why}"
                    )
        for spec in METHOD_SPECS:
            if spec.check is not None:
                spec.check(self)
        return self

    def enabled_methods(self) -> list[str]:
        """Names of the enabled methods in build order, e.g. ["prompt_tuning", "lora"]."""
        return [spec.name for spec in METHOD_SPECS if getattr(self, spec.name).enabled]


def _method_config(specs: tuple[TunerSpec, ...]) -> type[_MethodSections]:
    fields: dict[str, Any] = {
        spec.name: (spec.settings, Field(default_factory=spec.settings)) for spec in specs
    }
    return create_model("MethodConfig", __base__=_MethodSections, __module__=__name__, **fields)


# Read once: the schema, the YAML keys and the README's reference all follow from it.
METHOD_SPECS = section_specs()
MethodConfig = _method_config(METHOD_SPECS)


class DataConfig(_Section):
    train_path: str | None = Field(
        None,
        description="Training data: a .jsonl/.json/.csv/.tsv file, `builtin:aclsum/<aspect>`, "
        "`hf:<hub id>`, or a `datasets` save_to_disk directory.",
    )
    val_test_path: str | None = Field(
        None, description="Validation data (same forms); for builtins the val split is used."
    )
    validation: bool = Field(
        True,
        description="Evaluate during training. False: no validation; best/ is the final prompt "
        "(use it when the only held-out split is the test split).",
    )
    test_path: str | None = Field(
        None, description="Test data evaluated once at the end with the best prompt."
    )
    format: Literal["jsonl", "json", "csv", "tsv", "builtin", "hf", "hf_disk"] | None = Field(
        None, description="Data format; detected from the path when omitted."
    )
    input_field: str = Field("input", description="Record field holding the source text.")
    target_field: str = Field("target", description="Record field holding the reference.")
    id_field: str = Field("id", description="Record field holding an id (optional).")
    template: str | None = Field(
        None,
        description="Format string applied to each record, e.g. 'Summarize: {input}'. "
        "Without one the input is tokenized exactly as given.",
    )
    max_input_length: int = Field(512, ge=1, description="Input tokens kept (truncated).")
    max_target_length: int = Field(128, ge=1, description="Target tokens kept (truncated).")
    max_train_samples: int | None = Field(None, ge=1, description="Use only the first N.")
    max_eval_samples: int | None = Field(None, ge=1, description="Evaluate the first N only.")
    image_field: str = Field("image_path", description="Image-text files: the image field.")
    text_field: str = Field("text", description="Image-text files: the caption/answer field.")
    question_field: str = Field("question", description="Image-text VQA files: question field.")
    answer_field: str = Field("answer", description="Image-text VQA files: answer field.")
    strict: bool = Field(
        False,
        description="Stop at the first unreadable image instead of reporting and skipping it.",
    )
    feature_cache: Literal["off", "memory", "disk"] = Field(
        "memory", description="Cache frozen image features (computed once per image)."
    )
    cache_dir: str | None = Field(
        None, description="Disk feature cache directory (default: <output_dir>/feature_cache)."
    )
    subsample_classes: Literal["all", "base", "new"] = Field(
        "all",
        description="classify: CoOp's base-to-novel split: `base` keeps the first half of "
        "the sorted classes (rounded up), `new` the rest, in every split. A run on `base` "
        "also scores its test split's `new` classes and reports base, new and their "
        "harmonic mean (test_hm).",
    )
    num_shots: int | None = Field(
        None,
        ge=1,
        description="classify: K training examples per class, drawn with training.seed "
        "(CoOp's few-shot protocol); validation keeps min(K, 4) per class, test all.",
    )

    @field_validator("feature_cache", mode="before")
    @classmethod
    def _yaml_off_is_false(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` (in a file or a key=value override) as False.
        return "off" if value is False else value


class TaskConfig(_Section):
    type: Literal["text2text", "classify", "caption", "vqa"] = Field(
        "text2text", description="What the run learns; decides metrics and prediction."
    )
    max_new_tokens: int = Field(64, ge=1, description="Generation length for eval/predict.")
    instruction: str | None = Field(
        None,
        description="classify/caption: the instruction given with each image, e.g. 'Is this "
        "image AI-generated?'.",
    )
    labels: dict[str, str] | None = Field(
        None,
        description="classify: class folder name -> the words the model should say, e.g. "
        "{ai: 'yes', nature: 'no'}. Default: the class names themselves.",
    )
    answers: list[str] | None = Field(
        None,
        description="vqa: a closed answer list; answers are then scored instead of generated.",
    )
    positive_label: str | None = Field(
        None, description="classify with two classes: the class ROC-AUC/AP are computed for."
    )
    templates: list[str] | None = Field(
        None,
        description="classify with CLIP / SigLIP: zero-shot prompt templates, '{}' standing "
        "for a class's words, e.g. ['a photo of a {}.', 'a blurry photo of a {}.']; several "
        "are averaged, as CLIP does for ImageNet. Default: ['a photo of a {}.'].",
    )

    @field_validator("templates")
    @classmethod
    def _templates_name_the_class(cls, value: list[str] | None) -> list[str] | None:
        for template in value or []:
            if template.count("{}") != 1 or "{" in template.replace("{}", ""):
                raise ValueError(f"task.templates: {template!r} needs exactly one '{{}}'")
        if value is not None and not value:
            raise ValueError("task.templates: give at least one template, or leave it out")
        return value


class TrainingConfig(_Section):
    output_dir: str = Field("runs/default", description="Run directory.")
    epochs: float = Field(3, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(
        None, ge=1, description="Optimizer steps; overrides epochs when set."
    )
    batch_size: int = Field(
        8,
        ge=1,
        description="Examples per batch on each process (like HF's per_device_train_batch_size). "
        "An optimizer step takes batch_size x processes x gradient_accumulation_steps examples "
        "(the first log line says how many); keep that product to get the same training, or to "
        "resume exactly, under another process count.",
    )
    eval_batch_size: int | None = Field(None, ge=1, description="Defaults to batch_size.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Batches each process accumulates per optimizer step."
    )
    learning_rate: float = Field(3e-2, gt=0, description="Peak learning rate.")
    projection_learning_rate: float | None = Field(
        None,
        gt=0,
        description="Learning rate of trainable modules besides the prompt (vision projection, "
        "Q-Former prompt); default learning_rate / 10.",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    lr_scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Decay after warm-up."
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping; null disables.")
    logging_steps: int = Field(10, ge=1, description="Log train loss every N optimizer steps.")
    report_to: list[Literal["tensorboard"]] = Field(
        default_factory=list,
        description="Dashboards that also receive the train/eval/test metrics (metrics.jsonl is "
        "always written): [tensorboard] writes event files under <output_dir>/tensorboard/; "
        "a single name or a list; none (default) for none.",
    )
    eval_steps: int | None = Field(
        None, ge=1, description="Evaluate every N optimizer steps; null: at each epoch end."
    )
    save_steps: int | None = Field(
        None, ge=1, description="Checkpoint every N optimizer steps; null: with each eval."
    )
    save_total_limit: int | None = Field(
        2, ge=1, description="Keep only the newest N checkpoint-STEP directories."
    )
    overwrite_output_dir: bool = Field(
        False,
        description="A fresh start (no --resume) in an output_dir holding an earlier run's "
        "checkpoints, best/ or metrics.jsonl replaces them; false: refuse, naming them.",
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after N evaluations without improvement."
    )
    metric_for_best_model: str = Field(
        "eval_loss", description="Metric deciding best/ (eval_loss, eval_rougeL, eval_bleu, ...)."
    )
    greater_is_better: bool | None = Field(
        None, description="Direction of metric_for_best_model; inferred from its name if null."
    )
    eval_generate: bool = Field(
        True, description="Generate during eval to compute ROUGE/BLEU/EM (slower than loss)."
    )
    group_by_length: bool = Field(True, description="Length-bucketed batches (less padding).")
    bf16: bool = Field(
        False,
        description="bfloat16 autocast where the device supports it; trainable weights, "
        "optimizer state and the loss stay float32 (model.dtype: bfloat16 also stores the "
        "frozen weights in bfloat16).",
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    sharding: Literal["none", "fsdp"] = Field(
        "none",
        description="none: every process holds the whole model (data parallel); fsdp: "
        "each transformer block that trains or holds LoRA is sharded over the processes "
        "(FSDP2), its weights, gradients and optimizer state split between them; the "
        "rest of what trains (prompts, projections, embeddings) is replicated. Checkpoints "
        "and best/ are saved whole, so a run resumes under any process count.",
    )
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Seed for init, data order and dropout.")

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to_list(cls, value: Any) -> Any:
        # HF Trainer habits: `report_to: tensorboard`, `report_to: none`, `[none]`.
        if value is None:
            return []
        names = [value] if isinstance(value, str) else value
        if isinstance(names, list):
            return [n for n in names if not (isinstance(n, str) and n.lower() == "none")]
        return value
