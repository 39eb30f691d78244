"""FLUX.1 LoRA keys on the original (BFL) module names, as kohya sd-scripts writes them.

ComfyUI (`comfy/lora.py`: `lora_unet_` + the BFL state-dict path with `.` → `_`), InvokeAI
(`flux_kohya_lora_conversion_utils.py`: `lora_unet_(double|single)_blocks_{i}_(img_attn|img_mlp|
txt_attn|txt_mlp|linear1|linear2|…)`) and diffusers (`_convert_kohya_flux_lora_to_diffusers`) all
read these names. BFL fuses layers that diffusers keeps apart:

    double_blocks.{i}.img_attn.qkv = transformer_blocks.{i}.attn.to_q | to_k | to_v
    double_blocks.{i}.txt_attn.qkv = transformer_blocks.{i}.attn.add_{q,k,v}_proj
    single_blocks.{i}.linear1 = single_transformer_blocks.{i}.attn.to_{q,k,v} | proj_mlp

(outputs concatenated in that order). A LoRA trained on the separate diffusers layers is written
on the fused module exactly: down = the members' downs stacked (rank k·r), up = their ups placed
block-diagonally, alpha = k·alpha, so up·down·alpha'/rank' = each member's up·down·alpha/r on its
own rows and nothing else (diffusers recognises the block-diagonal up and splits it back).
"""

from __future__ import annotations

import re

import torch

PREFIX = "lora_unet_"

DOUBLE_BLOCK = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn_proj": ("attn.to_out.0",),
    "txt_attn_proj": ("attn.to_add_out",),
    "img_mlp_0": ("ff.net.0.proj",),
    "img_mlp_2": ("ff.net.2",),
    "txt_mlp_0": ("ff_context.net.0.proj",),
    "txt_mlp_2": ("ff_context.net.2",),
}
"""BFL layer of a double-stream block → the diffusers layers it is made of (in output order)."""
SINGLE_BLOCK = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
}
_BLOCKS = {
    "double": ("transformer_blocks", DOUBLE_BLOCK),
    "single": ("single_transformer_blocks", SINGLE_BLOCK),
}


def groups(num_double: int, num_single: int) -> dict[str, tuple[str, list[str]]]:
    """kohya module name → (diffusers block path, [diffusers member paths]) for every block."""
    out: dict[str, tuple[str, list[str]]] = {}
    for kind, count in (("double", num_double), ("single", num_single)):
        block_name, layers = _BLOCKS[kind]
        for i in range(count):
            block = f"{block_name}.{i}"
            for bfl, members in layers.items():
                out[f"{PREFIX}{kind}_blocks_{i}_{bfl}"] = (block, [f"{block}.{m}" for m in members])
    return out


def member_index(num_double: int, num_single: int) -> dict[str, tuple[str, int]]:
    """diffusers layer path → (kohya module name, position in its fused group)."""
    return {
        member: (name, position)
        for name, (_, members) in groups(num_double, num_single).items()
        for position, member in enumerate(members)
    }


def dora_attribute(kohya_name: str) -> str:
    """The attribute a fused DoRA group is kept under on its block: `dora_img_attn_qkv`."""
    match = re.fullmatch(rf"{PREFIX}(?:double|single)_blocks_\d+_(\w+)", kohya_name)
    if match is None:
        raise ValueError(f"not a FLUX.1 block layer: {kohya_name}")
    return f"dora_{match.group(1)}"


def fuse(
    parts: list[tuple[torch.Tensor, torch.Tensor]], alpha: float
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(down, up) of each member in output order → the fused (down, up, alpha)."""
    downs = [down.float() for down, _ in parts]
    ups = [up.float() for _, up in parts]
    return torch.cat(downs, dim=0), torch.block_diag(*ups), float(alpha) * len(parts)


def split(
    down: torch.Tensor, up: torch.Tensor, widths: list[int]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The inverse of `fuse` for a block-diagonal `up` (ValueError otherwise)."""
    k = len(widths)
    if down.shape[0] % k or sum(widths) != up.shape[0]:
        raise ValueError("not a fused LoRA of these widths")
    rank = down.shape[0] // k
    out, row = [], 0
    for j, width in enumerate(widths):
        block = up[row : row + width]
        others = torch.cat([block[:, : j * rank], block[:, (j + 1) * rank :]], dim=1)
        if others.numel() and bool(others.abs().max() > 0):
            raise ValueError("the fused up matrix is not block-diagonal")
        out.append((down[j * rank : (j + 1) * rank], block[:, j * rank : (j + 1) * rank]))
        row += width
    return out
