"""The errors that mean "the user's input is wrong" (the CLI prints them without a traceback)."""

from __future__ import annotations

from softprompt.backbones.loading import ModelLoadError
from softprompt.config import ConfigError
from softprompt.data.errors import DataError
from softprompt.paths import UnsafeNameError
from softprompt.train.checkpoint import CheckpointError
from softprompt.tuners.prompt_tuning.io import PromptLoadError

USER_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    DataError,
    ModelLoadError,
    PromptLoadError,
    CheckpointError,
    UnsafeNameError,
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)
