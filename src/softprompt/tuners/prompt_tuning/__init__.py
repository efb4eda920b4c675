"""Soft prompt tuning: a few learnable embedding vectors in front of a frozen model."""
