"""One extension per feature."""
