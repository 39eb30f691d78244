"""The toy base model: shape scenes (`shapes`), its training (`train_base`), scoring."""
