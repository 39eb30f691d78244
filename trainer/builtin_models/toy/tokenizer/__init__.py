"""Toy model weights (data only)."""
