"""A linear probe on frozen CLIP image features (loaded for prediction)."""
