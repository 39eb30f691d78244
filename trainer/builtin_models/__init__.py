"""Committed model weights shipped as package data (`toy/`: see docs/toy-model)."""
