"""Soft prompt tuning: a few learnable embedding vectors in front of a frozen model."""

from softprompt.tuners.prompt_tuning.config import PromptTuningConfig
from softprompt.tuners.prompt_tuning.model import SoftPrompt

__all__ = ["PromptTuningConfig", "SoftPrompt"]
