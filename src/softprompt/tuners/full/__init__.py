"""Full fine-tuning of the language model: the baseline every other method is measured against."""

from softprompt.tuners.full.config import FullSettings

__all__ = ["FullSettings"]
