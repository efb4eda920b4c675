"""Prefix tuning: learned key/value prefixes in every attention layer of the language model."""

from softprompt.tuners.prefix_tuning.config import PrefixTuningSettings

__all__ = ["PrefixTuningSettings"]
