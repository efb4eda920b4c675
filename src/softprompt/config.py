"""Typed run configuration: YAML is its serialised form.

Every field carries a description (the README's config reference is generated from
them). Loading applies `key.sub=value` overrides, maps the older key names that users
bring from other scripts, and turns every validation failure into one paragraph that
names the key, the bad value and what is allowed.
"""

from __future__ import annotations

import difflib
import reprlib
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from softprompt.tuners.full.config import FullSettings
from softprompt.tuners.lora.config import LoraSettings
from softprompt.tuners.prompt_tuning.config import PromptTuningConfig


class ConfigError(ValueError):
    """A configuration problem, with a message meant for the user."""


class _Section(BaseModel):
    # inf/nan pass `gt=0` checks and then poison training; refuse them up front.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Section):
    name_or_path: str = Field(
        "embedded:smollm2-135m",
        description="Hugging Face hub id, a local directory written by save_pretrained, or an "
        "embedded model (`embedded:smollm2-135m`).",
    )
    family: Literal["causal_lm", "seq2seq", "composed", "blip2", "instructblip"] | None = Field(
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


class MethodConfig(_Section):
    prompt_tuning: PromptTuningConfig = Field(default_factory=PromptTuningConfig)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    full: FullSettings = Field(default_factory=FullSettings)

    @model_validator(mode="after")
    def _methods_fit_together(self) -> MethodConfig:
        if self.full.enabled and self.lora.enabled:
            raise ValueError(
                "method.full and method.lora are both enabled: full fine-tuning already trains "
                "every weight LoRA would adapt; enable one of them"
            )
        if self.lora.quantization_bit and not self.lora.enabled:
            raise ValueError(
                "method.lora.quantization_bit is set but method.lora.enabled is false: "
                "quantized base weights can only be trained through LoRA (QLoRA)"
            )
        return self

    def enabled_methods(self) -> list[str]:
        """Names of the enabled methods, e.g. ["prompt_tuning", "lora"]."""
        return [n for n in ("prompt_tuning", "lora", "full") if getattr(self, n).enabled]


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
    eval_steps: int | None = Field(
        None, ge=1, description="Evaluate every N optimizer steps; null: at each epoch end."
    )
    save_steps: int | None = Field(
        None, ge=1, description="Checkpoint every N optimizer steps; null: with each eval."
    )
    save_total_limit: int | None = Field(
        2, ge=1, description="Keep only the newest N checkpoint-STEP directories."
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
    bf16: bool = Field(False, description="bfloat16 autocast where the device supports it.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Seed for init, data order and dropout.")


class RunConfig(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    @model_validator(mode="after")
    def _best_metric_is_computed(self) -> RunConfig:
        # Caught here, not at the first evaluation after minutes of training.
        metric = self.training.metric_for_best_model.removeprefix("eval_")
        scored = self.task.type == "classify" or (self.task.type == "vqa" and self.task.answers)
        if metric in GENERATION_METRICS and not self.training.eval_generate and not scored:
            raise ValueError(
                f"training.metric_for_best_model {self.training.metric_for_best_model!r} needs "
                "generated text during evaluation, but training.eval_generate is false; set "
                "eval_generate: true or pick eval_loss"
            )
        return self


# Metrics computed from generated text (the others come from the loss or option scores).
GENERATION_METRICS = frozenset(
    ["bleu", "rouge1", "rouge2", "rougeL", "rougeLsum", "exact_match", "cider", "vqa_accuracy"]
)


# Names from the scripts users bring (seed 000's InstructBLIP trainer and HF Trainer
# habits) -> our keys. They keep working, with a warning naming the new key.
LEGACY_KEYS: dict[str, str] = {
    "model.prompt_tuning_params.num_virtual_tokens": "method.prompt_tuning.num_virtual_tokens",
    "model.prompt_tuning_params.init_method": "method.prompt_tuning.init_method",
    "model.prompt_tuning_params.init_text": "method.prompt_tuning.init_text",
    "model.prompt_tuning_params.prompt_tuning_init_text": "method.prompt_tuning.init_text",
    "model.model_name": "model.name_or_path",
    "model.model_name_or_path": "model.name_or_path",
    "training.learning_rate_prompt_tuning": "training.learning_rate",
    "training.num_train_epochs": "training.epochs",
    "training.num_epochs": "training.epochs",
    "training.per_device_train_batch_size": "training.batch_size",
    "training.per_device_eval_batch_size": "training.eval_batch_size",
    "prompt_tuning.prompt_length": "method.prompt_tuning.num_virtual_tokens",
    "prompt_tuning.enabled": "method.prompt_tuning.enabled",
    "prompt_tuning.initialization": "method.prompt_tuning.init_method",
}


# A config is a few levels deep; YAML anchors can make a small file expand into a huge
# or endless tree ("billion laughs", `&a [*a]`), so flattening stops at these limits.
MAX_DEPTH = 8
MAX_KEYS = 2000


def _flatten(tree: dict[Any, Any], prefix: str = "", depth: int = 0, count=None) -> dict:
    count = count if count is not None else [0]
    if depth > MAX_DEPTH:
        raise ConfigError(f"config key {prefix.rstrip('.')!r} is nested too deeply")
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        count[0] += 1
        if count[0] > MAX_KEYS:
            raise ConfigError(f"config has more than {MAX_KEYS} keys; is it really a run config?")
        dotted = f"{prefix}{key}"
        # Mapping-valued fields (task.labels) keep their keys as they are: a class folder
        # may well be called "v1.0".
        if isinstance(value, dict) and value and dotted not in _FIELD_KEYS:
            flat.update(_flatten(value, dotted + ".", depth + 1, count))
        else:
            flat[dotted] = value
    return flat


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _all_keys(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_all_keys(ann, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


_FIELD_KEYS = frozenset(_all_keys())
_SECTIONS = {
    "": RunConfig,
    "model": ModelConfig,
    "method": MethodConfig,
    "method.prompt_tuning": PromptTuningConfig,
    "method.lora": LoraSettings,
    "method.full": FullSettings,
    "data": DataConfig,
    "task": TaskConfig,
    "training": TrainingConfig,
}


def _map_legacy(raw: dict[str, Any]) -> dict[str, Any]:
    flat = _flatten(raw)
    out: dict[str, Any] = {}
    for key, value in flat.items():
        new = LEGACY_KEYS.get(key)
        if new is not None:
            warnings.warn(f"config key {key!r} is deprecated; use {new!r}", stacklevel=3)
            if new.endswith("init_method") and isinstance(value, str):
                value = value.upper()
            key = new
        _set_dotted(out, key, value)
    return out


def parse_value(text: str) -> Any:
    """Parse a command-line override value with YAML rules (`3e-2`, `true`, `null`, `[1,2]`)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlevel = 60, 60, 3
_SHORT.maxlist = _SHORT.maxdict = _SHORT.maxtuple = _SHORT.maxset = 4
MAX_REPORTED_ERRORS = 8


def _printable(text: str) -> str:
    # One paragraph: a key or message holding a newline or control character is quoted.
    return text if text.isprintable() else repr(text)


def _describe_error(item: Any) -> str:
    parts = [str(p) for p in item["loc"] if not isinstance(p, int)]
    loc = _printable(".".join(parts)[:200])
    kind = item["type"]
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(loc, _all_keys(), n=1, cutoff=0.5)
        leaf = loc.rsplit(".", 1)[-1]
        if not close:
            close = [k for k in _all_keys() if k.rsplit(".", 1)[-1] == leaf][:1]
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown key {loc!r}{hint}"
    got = _SHORT.repr(item.get("input"))
    section = _SECTIONS.get(".".join(parts))
    if kind == "model_type" and section is not None:
        names = list(section.model_fields)
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        return f"{loc}: must be a mapping of {loc} keys ({shown}) (got {got})"
    msg = _printable(item["msg"].removeprefix("Value error, "))
    if kind == "string_type" and isinstance(item.get("input"), bool):
        msg += "; YAML reads unquoted yes/no/on/off/true/false as booleans, so quote the word"
    return f"{loc or '(top level)'}: {msg} (got {got})"


def _format_error(err: ValidationError, source: str) -> str:
    items = err.errors()
    lines = [_describe_error(item) for item in items[:MAX_REPORTED_ERRORS]]
    if len(items) > MAX_REPORTED_ERRORS:
        lines.append(f"and {len(items) - MAX_REPORTED_ERRORS} more problems")
    return f"invalid config {source}: " + "; ".join(lines)


def build_config(
    raw: dict[str, Any] | None, overrides: list[str] | None = None, source: str = "<dict>"
) -> RunConfig:
    """Validate a raw mapping plus `key.sub=value` overrides into a RunConfig.

    Raises:
        ConfigError: naming the offending key and value (and the closest valid key).
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid config {source}: the top level must be a mapping")
    tree = _map_legacy(raw)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, value = item.split("=", 1)
        key = LEGACY_KEYS.get(key.strip(), key.strip())
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(
                f"override {item!r}: {key!r} is not a key; write key.sub=value, "
                "e.g. training.epochs=3"
            )
        _set_dotted(tree, key, parse_value(value))
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None
    except RecursionError:
        # A self-referencing YAML value (`&a [*a]`) in a field that is not a mapping.
        raise ConfigError(f"invalid config {source}: a value refers to itself") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config file and apply overrides."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a config file" if path.is_dir() else "config file not found"
        raise ConfigError(f"{what}: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}{_yaml_problem(err)}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    return build_config(raw, overrides, source=str(path))


def _yaml_problem(err: yaml.YAMLError) -> str:
    """`: not valid YAML at line L, column C (problem)`: one line; PyYAML's text spans several."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    parts = [getattr(err, "context", None), getattr(err, "problem", None)]
    detail = ", ".join(str(p) for p in parts if p) or str(err).splitlines()[0]
    return f": not valid YAML{where} ({_printable(detail)})"


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config (every default made explicit) as YAML."""
    Path(path).write_text(
        yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
    )


def config_reference_markdown() -> str:
    """The config reference table the README embeds (one row per key)."""
    rows = ["| key | default | description |", "|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
                continue
            default = field.get_default(call_default_factory=True)
            rows.append(f"| `{prefix}{name}` | `{default!r}` | {field.description or ''} |")

    walk(RunConfig, "")
    return "\n".join(rows)
