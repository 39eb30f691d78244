"""The frozen transformer quantised with bitsandbytes (`quantize_base`: int8 or nf4), LoRA on top.

Every `nn.Linear` inside the transformer's blocks (`Architecture.quantized_blocks`: FLUX.1's
double/single-stream blocks, Z-Image's layers and refiners; nearly all of the weights) becomes
a bitsandbytes `Linear8bitLt` (LLM.int8, outlier threshold 6.0: the default of diffusers'
`BitsAndBytesConfig`) or `Linear4bit` (NF4 with double quantisation, as QLoRA), computing in the
job's weight dtype. The embedders, norms and output projection stay in that dtype. peft wraps
the quantised layers with its own bitsandbytes LoRA layers (`peft.tuners.lora.bnb`), so the
adapter's keys and shapes, and every exported file, are those of an unquantised run.

Each layer is built from the CPU copy and moved to the device one at a time (bitsandbytes
quantises on that move), so the full-precision transformer never sits on the GPU.
bitsandbytes ≥ 0.48 runs both kinds on the CPU as well as on CUDA.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainer.adapters import _set_submodule

OUTLIER_THRESHOLD = 6.0
"""LLM.int8's outlier threshold (diffusers' `BitsAndBytesConfig.llm_int8_threshold` default)."""


def quantize_linears(
    root: nn.Module,
    blocks: tuple[str, ...],
    kind: str,
    device: torch.device,
    compute_dtype: torch.dtype,
) -> int:
    """Replace every Linear under `root.<block list>` by its int8 / nf4 version on `device`;
    returns how many were replaced. `root` must be on the CPU."""
    prefixes = tuple(f"{name}." for name in blocks)
    linears = [
        (name, module)
        for name, module in root.named_modules()
        if name.startswith(prefixes) and type(module) is nn.Linear
    ]
    for name, linear in linears:
        _set_submodule(root, name, _quantized(linear, kind, device, compute_dtype))
    # the flags peft (and diffusers) read to wrap these layers with peft's bitsandbytes LoRA
    root.is_loaded_in_8bit = kind == "int8"  # type: ignore[assignment]
    root.is_loaded_in_4bit = kind == "nf4"  # type: ignore[assignment]
    return len(linears)


def _quantized(
    linear: nn.Linear, kind: str, device: torch.device, compute_dtype: torch.dtype
) -> nn.Module:
    import bitsandbytes as bnb

    sizes: dict[str, Any] = {
        "input_features": linear.in_features,
        "output_features": linear.out_features,
        "bias": linear.bias is not None,
        "device": "meta",  # no random init of a full-size weight that is replaced next
    }
    weight = linear.weight.data.to("cpu")
    layer: nn.Module
    if kind == "int8":
        layer = bnb.nn.Linear8bitLt(**sizes, has_fp16_weights=False, threshold=OUTLIER_THRESHOLD)
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    elif kind == "nf4":
        layer = bnb.nn.Linear4bit(**sizes, compute_dtype=compute_dtype, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(
            weight, requires_grad=False, quant_type="nf4", compress_statistics=True
        )
        # bitsandbytes' CPU inference repacking (AVX512-bf16; a no-grad forward in eval mode,
        # i.e. the first validation grid) rewrites the weight in place into a layout whose
        # gradient-enabled forward then fails ("a view of a leaf Variable ... in-place"), and
        # fails outright on inputs narrower than a block (the tiny models): training keeps
        # the generic 4-bit matmul. CUDA never takes that path.
        layer.support_avx512bf16_for_cpu = False
    else:
        raise ValueError(f"unknown quantisation {kind!r} (use int8 or nf4)")
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.data.to("cpu"), requires_grad=False)
    return layer.to(device)
