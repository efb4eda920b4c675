"""Typed run configuration: YAML is its serialised form.

Every field carries a description (the README's config reference is generated from
them). Loading applies `key.sub=value` overrides, maps the older key names that users
bring from other scripts, and turns every validation failure into one paragraph that
names the key, the bad value and what is allowed.
"""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    model_validator,
)

from softprompt.config.errors import ConfigError, describe_error, printable
from softprompt.config.sections import (  # re-exported: callers import the sections here
    METHOD_SPECS,
    DataConfig,
    MethodConfig,
    ModelConfig,
    TaskConfig,
    TrainingConfig,
    _Section,
)
from softprompt.config.task_entries import TaskEntry, TaskSampling


class RunConfig(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    tasks: list[TaskEntry] = Field(
        default_factory=list,
        description="Several tasks trained together, one prompt each (a prompt bank); "
        "each entry overrides data/task/prompt settings. Empty: the single task above.",
    )
    task_sampling: TaskSampling = Field(default_factory=TaskSampling)

    @model_validator(mode="after")
    def _tasks_resolve(self) -> RunConfig:
        if self.tasks:
            from softprompt.config.multitask import resolve_tasks

            resolve_tasks(self)  # each task's merged config is valid
        return self

    @model_validator(mode="after")
    def _prefix_without_checkpointing(self) -> RunConfig:
        # transformers drops past_key_values inside checkpointed layers while training, so
        # the prefix would silently not be there.
        if self.method.prefix_tuning.enabled and self.training.gradient_checkpointing:
            raise ValueError(
                "method.prefix_tuning.enabled with training.gradient_checkpointing: true: "
                "checkpointed layers run without past key/values, so the prefix would be "
                "ignored while training; set training.gradient_checkpointing: false"
            )
        return self

    @model_validator(mode="after")
    def _sharding_without_quantization(self) -> RunConfig:
        # FSDP all-gathers plain tensors; bitsandbytes' packed 4/8-bit weights are not.
        if self.training.sharding == "fsdp" and self.method.lora.quantization_bit:
            raise ValueError(
                "training.sharding: fsdp with method.lora.quantization_bit: sharding "
                "bitsandbytes' quantized weights is not supported; train QLoRA with "
                "training.sharding: none (its 4-bit base already fits where a bf16 one does not)"
            )
        return self

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
    **{f"method.{spec.name}": spec.settings for spec in METHOD_SPECS},
    "data": DataConfig,
    "task": TaskConfig,
    "training": TrainingConfig,
    "task_sampling": TaskSampling,
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


MAX_REPORTED_ERRORS = 8


def closest_key(key: str) -> str | None:
    """The config key a mistyped `key` most likely meant (same leaf name as a fallback)."""
    close = difflib.get_close_matches(key, _all_keys(), n=1, cutoff=0.5)
    if not close:
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in _all_keys() if k.rsplit(".", 1)[-1] == leaf][:1]
    return close[0] if close else None


def check_key(key: str, what: str = "key") -> str:
    """A dotted key as an override writes it -> the config key it sets (older names mapped).

    Keys below a mapping-valued field (`task.labels.ai`) pass; their values are checked
    when the config is built.

    Raises:
        ConfigError: the key is not in the schema; names the closest valid key.
    """
    key = LEGACY_KEYS.get(key.strip(), key.strip())
    parts = key.split(".")
    if any(".".join(parts[:n]) in _FIELD_KEYS for n in range(1, len(parts) + 1)):
        return key
    if key in _SECTIONS:
        names = ", ".join(_SECTIONS[key].model_fields)
        raise ConfigError(f"{what} {key!r} is a section, not a key; its keys: {names}")
    close = closest_key(key)
    hint = f"; did you mean {close!r}?" if close else ""
    raise ConfigError(f"unknown {what} {printable(key[:200])!r}{hint}")


def _suggest_key(parts: list[str]) -> str | None:
    """The valid key an unknown one (its names, list indices left out) most likely meant."""
    if len(parts) == 2 and parts[0] == "tasks":  # a key of a `tasks:` entry
        entry_keys = list(TaskEntry.model_fields)
        close = difflib.get_close_matches(parts[1], entry_keys, n=1, cutoff=0.5)
        if close:
            return f"tasks[].{close[0]}"
    return closest_key(printable(".".join(parts)[:200]))


def _format_error(err: ValidationError, source: str) -> str:
    items = err.errors()
    lines = [describe_error(item, RunConfig, _suggest_key) for item in items[:MAX_REPORTED_ERRORS]]
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
    if raw is None:
        # An empty file is a truncated or wrong one far more often than "all defaults".
        raise ConfigError(
            f"{path}: the config file is empty (or holds only comments); give at least "
            "model and data sections (see configs/ for examples), or {} for all defaults"
        )
    return build_config(raw, overrides, source=str(path))


def _yaml_problem(err: yaml.YAMLError) -> str:
    """`: not valid YAML at line L, column C (problem)`: one line; PyYAML's text spans several."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    parts = [getattr(err, "context", None), getattr(err, "problem", None)]
    detail = ", ".join(str(p) for p in parts if p) or str(err).splitlines()[0]
    return f": not valid YAML{where} ({printable(detail)})"


def config_yaml(config: RunConfig) -> str:
    """The resolved config (every default made explicit) as YAML text."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (a run's own copy is written atomically by
    train/setup.py)."""
    Path(path).write_text(config_yaml(config), encoding="utf-8")


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
            shown = "required" if field.is_required() else f"`{default!r}`"
            rows.append(f"| `{prefix}{name}` | {shown} | {field.description or ''} |")

    walk(RunConfig, "")
    walk(TaskEntry, "tasks[].")  # the keys of each `tasks:` entry
    return "\n".join(rows)
