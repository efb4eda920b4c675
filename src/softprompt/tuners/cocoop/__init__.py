"""CoCoOp: CoOp with an image-conditioned context token."""
