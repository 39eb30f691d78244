"""Options that change how fast or how small a training step is, never what it computes.

- `gradient_checkpointing`: the UNet (and any text encoder being trained) drop activations in
  the forward pass and recompute them in the backward pass: less memory, ~20-30 % more time.
- Attention on CPU in bf16/fp16: torch's CPU flash-attention kernel (what `scaled_dot_product_
  attention` picks) is 2-4× slower in bf16 than two matmuls and a softmax at the sizes a UNet
  attends over on a CPU (64-1024 tokens, head dim 8-64, 77 text tokens), forward and backward
  (docs/benchmarks.md). There the UNet's attention runs as diffusers' `AttnProcessor` (explicit
  `baddbmm` → softmax → `bmm`): the same attention, another kernel. fp32 and CUDA keep SDPA.
"""

from __future__ import annotations

from typing import Any

import torch

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


def uses_matmul_attention(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a UNet on `device` computing in `dtype` attends faster with explicit matmuls."""
    return device.type == "cpu" and dtype in (torch.bfloat16, torch.float16)


def apply_attention_kernel(model: Any, device: torch.device, dtype: torch.dtype) -> bool:
    """Explicit-matmul attention for a UNet denoiser on CPU in bf16/fp16; True if applied.

    Only SD-style UNets (diffusers' `Attention` with the default SDPA processor) are switched;
    FLUX.1 and Z-Image transformers keep their own processors."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    denoiser = model.denoiser
    processors = getattr(denoiser, "attn_processors", None)
    if not processors or not uses_matmul_attention(device, dtype):
        return False
    if not all(isinstance(p, AttnProcessor2_0) for p in processors.values()):
        return False
    denoiser.set_attn_processor(AttnProcessor())
    return True
