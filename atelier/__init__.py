"""atelier."""
