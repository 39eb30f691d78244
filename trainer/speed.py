"""Options that change how fast or how small a training step is, never what it computes.

- `gradient_checkpointing`: the UNet (and any text encoder being trained) drop activations in
  the forward pass and recompute them in the backward pass: less memory, ~20-30 % more time.
"""

from __future__ import annotations

from typing import Any

from trainer.config import TrainConfig


def apply_memory_options(model: Any, config: TrainConfig) -> None:
    """Gradient checkpointing on every trained module when the job asks for it."""
    if not config.gradient_checkpointing:
        return
    model.denoiser.enable_gradient_checkpointing()
    trains_text = config.method == "embedding" or config.train_text_encoder
    for encoder in model.text_encoders if trains_text else []:
        enable = getattr(encoder, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:  # transformers < 5.23
            encoder.gradient_checkpointing_enable({"use_reentrant": False})
