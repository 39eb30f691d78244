"""File formats other tools read (kohya LoRA names, hashes)."""
