"""Options that change how fast or how small a training step is, never what it computes.

- `gradient_checkpointing`: the UNet (and any text encoder being trained) drop activations in
  the forward pass and recompute them in the backward pass: less memory, ~20-30 % more time.
- Attention on CPU in bf16: torch's CPU flash-attention kernel (what `scaled_dot_product_
  attention` picks) is 2-4× slower in bf16 than two matmuls and a softmax at the sizes measured
  (64-256 image tokens, head dim 16-32, 77 text tokens), forward and backward
  (docs/benchmarks.md). There the UNet's attention runs as diffusers' `AttnProcessor` (explicit
  `baddbmm` → softmax → `bmm`): the same attention, another kernel. fp32 (where the flash kernel
  wins on self-attention), fp16 (not measured) and CUDA keep SDPA.
- Freed memory kept on CPU: glibc's malloc hands every block above its (adaptive) mmap threshold
  back to the kernel when it is freed, and trims the heap top; a training step frees and
  reallocates the same activations each time, so the next step takes ~5000 fresh-page faults
  (~10 ms of kernel time a step on the mid benchmark model). A CPU job raises both thresholds
  (what jemalloc/tcmalloc, which fast CPU trainers preload, do by design): freed activations are
  reused, at the cost of the process keeping its peak memory until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any

import torch

from trainer.config import TrainConfig


def apply_memory_options(model: Any, config: TrainConfig) -> None:
    """Gradient checkpointing on every trained module when the job asks for it."""
    if not config.gradient_checkpointing:
        return
    model.denoiser.enable_gradient_checkpointing()
    trains_text = config.learns_token or config.train_text_encoder
    for encoder in model.text_encoders if trains_text else []:
        enable = getattr(encoder, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:  # transformers < 5.23
            encoder.gradient_checkpointing_enable({"use_reentrant": False})


def uses_matmul_attention(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a UNet on `device` computing in `dtype` attends faster with explicit matmuls."""
    return device.type == "cpu" and dtype == torch.bfloat16


def apply_attention_kernel(model: Any, device: torch.device, dtype: torch.dtype) -> bool:
    """Explicit-matmul attention for a UNet denoiser on CPU in bf16; True if applied.

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


MMAP_THRESHOLD = 64 << 20
"""Blocks up to 64 MiB come from the heap (glibc's own adaptive threshold stops at 32 MiB)."""
TRIM_THRESHOLD = 1 << 30
"""Up to 1 GiB of free heap top stays with the process."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory(device: torch.device) -> bool:
    """On a CPU job under glibc, stop malloc returning freed activations to the kernel after
    every step (see the module docstring); True if applied. Idempotent, process-wide."""
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
