"""The `tasks:` list of a multi-task config: several tasks, one prompt each, one backbone.

Each entry names a task and says how it differs from the rest of the config: its data
(`data:` keys), its task settings (`task:` keys, or the shorthand `instruction` / seed
000's `prompt`) and its prompt (`num_virtual_tokens`, `init_method`, `init_text`, or
`init_from` a trained prompt directory, for SPoT-style transfer). Everything it does not
set comes from the config's own `data`, `task` and `method.prompt_tuning` sections.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TaskEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field(
        ...,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$",
        description="Task name: the prompt's name in the bank, its directory and the "
        "prefix of its metrics (eval_<name>_accuracy).",
    )
    instruction: str | None = Field(
        None, description="Shorthand for task.instruction (seed configs call it `prompt`)."
    )
    num_virtual_tokens: int | None = Field(
        None, ge=1, le=4096, description="This task's prompt length (default: the method's)."
    )
    init_method: Literal["RANDOM", "VOCAB", "TEXT"] | None = Field(
        None, description="This task's prompt initialisation (default: the method's)."
    )
    init_text: str | None = Field(None, description="Text for init_method TEXT.")
    init_from: str | None = Field(
        None,
        description="Start from a trained prompt directory (a run's best/, or a task of a "
        "bank: BANK/<task>); its length is this task's prompt length.",
    )
    data: dict[str, Any] = Field(
        default_factory=dict, description="`data` keys for this task (train_path, ...)."
    )
    task: dict[str, Any] = Field(
        default_factory=dict, description="`task` keys for this task (type, labels, ...)."
    )

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if "prompt" in data and "instruction" not in data:
                data["instruction"] = data.pop("prompt")
            if isinstance(data.get("init_method"), str):
                data["init_method"] = data["init_method"].upper()
        return data

    def prompt_overrides(self) -> dict[str, Any]:
        """The `method.prompt_tuning` keys this task sets."""
        keys = ("num_virtual_tokens", "init_method", "init_text")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


class TaskSampling(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    strategy: Literal["proportional", "temperature"] = Field(
        "proportional",
        description="How mixed batches draw tasks. proportional: every example once per "
        "epoch (tasks in proportion to their size); temperature: task i gets a share "
        "proportional to n_i^(1/T) of each epoch (T > 1 evens out unequal tasks; small "
        "tasks repeat, large ones are subsampled).",
    )
    temperature: float = Field(2.0, gt=0, le=1000, description="T for strategy temperature.")
