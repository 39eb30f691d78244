"""kohya-ss key names and hashes: what InvokeAI, ComfyUI and A1111 expect in a LoRA file.

Key = prefix + module path with `.` → `_`. SD 1.x UNet paths are diffusers names; SDXL files use
the original Stability (SGM) names, so SDXL UNet paths are mapped first. Text-encoder paths always
carry the `text_model_` part (transformers 5 dropped the attribute from CLIPTextModel).
"""

from __future__ import annotations

import hashlib
import re
from io import BytesIO

import torch
from safetensors.torch import save as save_bytes

PREFIXES = {
    ("sd1", "unet"): "lora_unet_",
    ("sd1", "text_encoder"): "lora_te_",
    ("sdxl", "unet"): "lora_unet_",
    ("sdxl", "text_encoder"): "lora_te1_",
    ("sdxl", "text_encoder_2"): "lora_te2_",
}
KEY_PATTERN = re.compile(
    r"^lora_(unet|te|te1|te2)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha|dora_scale)$"
)
_RESNET_SGM = {
    "conv1": "in_layers.2",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
    "time_emb_proj": "emb_layers.1",
}


def kohya_module_name(
    architecture: str, component: str, path: str, layers_per_block: int = 2,
    up_block_has_attention: tuple[bool, ...] = (),
) -> str:  # fmt: skip
    """The kohya name (without suffix) of the module at diffusers `path` in `component`."""
    prefix = PREFIXES[(architecture, component)]
    if component != "unet":
        path = "text_model." + path.removeprefix("text_model.")
    elif architecture == "sdxl":
        path = diffusers_to_sgm(path, layers_per_block, up_block_has_attention)
    return prefix + path.replace(".", "_")


def diffusers_to_sgm(
    path: str, layers_per_block: int, up_block_has_attention: tuple[bool, ...]
) -> str:
    """Map a diffusers UNet module path to the original Stability (SGM) name."""
    per = layers_per_block + 1
    parts = path.split(".")
    head, rest = parts[0], parts[1:]
    if head == "down_blocks":
        block, kind = int(rest[0]), rest[1]
        if kind == "downsamplers":
            return f"input_blocks.{(block + 1) * per}.0.op"
        index = 1 + block * per + int(rest[2])
        return f"input_blocks.{index}.{_inner(kind, rest[3:])}"
    if head == "mid_block":
        kind, j = rest[0], int(rest[1])
        index = 1 if kind == "attentions" else 2 * j
        return f"middle_block.{index}." + _inner(kind, rest[2:]).split(".", 1)[1]
    if head == "up_blocks":
        block, kind = int(rest[0]), rest[1]
        if kind == "upsamplers":
            slot = 2 if up_block_has_attention[block] else 1
            return f"output_blocks.{block * per + layers_per_block}.{slot}.conv"
        index = block * per + int(rest[2])
        return f"output_blocks.{index}.{_inner(kind, rest[3:])}"
    raise ValueError(f"no SGM name for UNet module {path!r}")


def _inner(kind: str, rest: list[str]) -> str:
    if kind == "attentions":
        return "1." + ".".join(rest)
    name = ".".join(rest)
    return "0." + _RESNET_SGM.get(name, name)


def kohya_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """kohya's `sshs_model_hash` / `sshs_legacy_hash` (A1111 additional-networks hashes).

    Computed over a file holding only the `ss_*` metadata, so user edits of other metadata do
    not change them.
    """
    ss_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    data = save_bytes(tensors, ss_only)
    header = int.from_bytes(data[:8], "little")
    model_hash = hashlib.sha256(data[8 + header :]).hexdigest()
    legacy = BytesIO(data)
    legacy.seek(0x100000)
    legacy_hash = hashlib.sha256(legacy.read(0x10000)).hexdigest()[:8]
    return model_hash, legacy_hash
