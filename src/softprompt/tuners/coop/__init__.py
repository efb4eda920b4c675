"""CoOp: learned context words of CLIP class prompts."""
