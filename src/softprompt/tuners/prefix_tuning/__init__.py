"""Prefix tuning: learned key/value prefixes in every attention layer of the language model."""
