"""Diffusers → original LDM ("single-file", A1111 / ComfyUI) key layout for SD-1 checkpoints.

A compact re-implementation of the mapping in diffusers'
`scripts/convert_diffusers_to_original_stable_diffusion.py`, driven by the model configs
(block counts, layers per block, where attention sits) instead of SD 1.5's fixed layout, so it
also fits the tiny test model.
"""

from __future__ import annotations

from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."

_UNET_RESNET = [  # diffusers name → LDM name inside a resnet
    ("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]  # fmt: skip
_VAE_ATTENTION = [  # diffusers name → LDM name inside the VAE mid attention
    ("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"),
]  # fmt: skip


def _rename(key: str, table: list[tuple[str, str]]) -> str:
    """Replace the first matching diffusers prefix in `key` (longest prefixes listed first)."""
    for old, new in table:
        if key == old or key.startswith(old + "."):
            return new + key[len(old) :]
    raise KeyError(f"no LDM name for {key!r}")


def _resnet(key: str, inner: list[tuple[str, str]]) -> str:
    head, _, leaf = key.rpartition(".")  # leaf: weight / bias
    for old, new in inner:
        if head.endswith("." + old):
            return head[: -len(old)] + new + "." + leaf
    return key


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel state dict → `model.diffusion_model.*` keys."""
    per = int(config["layers_per_block"]) + 1  # resnets (+ downsampler / upsampler) per level
    n = len(config["block_out_channels"])
    table: list[tuple[str, str]] = [
        ("time_embedding.linear_1", "time_embed.0"),
        ("time_embedding.linear_2", "time_embed.2"),
        ("conv_in", "input_blocks.0.0"),
        ("conv_norm_out", "out.0"),
        ("conv_out", "out.2"),
        ("mid_block.resnets.0", "middle_block.0"),
        ("mid_block.attentions.0", "middle_block.1"),
        ("mid_block.resnets.1", "middle_block.2"),
    ]
    for i in range(n):
        for j in range(per - 1):
            table.append((f"down_blocks.{i}.resnets.{j}", f"input_blocks.{i * per + j + 1}.0"))
            table.append((f"down_blocks.{i}.attentions.{j}", f"input_blocks.{i * per + j + 1}.1"))
        if i < n - 1:
            down = f"input_blocks.{(i + 1) * per}.0.op"
            table.append((f"down_blocks.{i}.downsamplers.0.conv", down))
    for i, kind in enumerate(config["up_block_types"]):
        for j in range(per):
            table.append((f"up_blocks.{i}.resnets.{j}", f"output_blocks.{i * per + j}.0"))
            table.append((f"up_blocks.{i}.attentions.{j}", f"output_blocks.{i * per + j}.1"))
        if i < n - 1:  # the upsampler follows the attention when the level has one
            slot = 2 if "CrossAttn" in kind else 1
            up = f"output_blocks.{i * per + per - 1}.{slot}.conv"
            table.append((f"up_blocks.{i}.upsamplers.0.conv", up))
    table.sort(key=lambda pair: -len(pair[0]))
    out = {}
    for key, value in state.items():
        new = _rename(key, table)
        if ".resnets." in key:
            new = _resnet(new, _UNET_RESNET)
        out[UNET_PREFIX + new] = value
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """AutoencoderKL state dict → `first_stage_model.*` keys (attention as 1×1 convs)."""
    n = len(config["block_out_channels"])
    table: list[tuple[str, str]] = [("encoder.conv_norm_out", "encoder.norm_out"),
                                    ("decoder.conv_norm_out", "decoder.norm_out")]  # fmt: skip
    for part in ("encoder", "decoder"):
        table += [
            (f"{part}.mid_block.resnets.0", f"{part}.mid.block_1"),
            (f"{part}.mid_block.resnets.1", f"{part}.mid.block_2"),
            (f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1"),
        ]
    for i in range(n):
        table.append((f"encoder.down_blocks.{i}.resnets", f"encoder.down.{i}.block"))
        table.append((f"encoder.down_blocks.{i}.downsamplers.0", f"encoder.down.{i}.downsample"))
        table.append((f"decoder.up_blocks.{i}.resnets", f"decoder.up.{n - 1 - i}.block"))
        table.append((f"decoder.up_blocks.{i}.upsamplers.0", f"decoder.up.{n - 1 - i}.upsample"))
    table.sort(key=lambda pair: -len(pair[0]))
    out = {}
    for key, value in state.items():
        same = key.split(".")[0] in ("quant_conv", "post_quant_conv") or any(
            f".{name}." in key for name in ("conv_in", "conv_out")
        )  # these keep their names in both layouts
        new = key if same else _rename(key, table)
        if ".attentions." in key:
            new = _resnet(new, _VAE_ATTENTION)
            if value.ndim == 2:  # linear → 1×1 conv, as in the original checkpoints
                value = value[:, :, None, None]
        elif ".resnets." in key:
            new = _resnet(new, [("conv_shortcut", "nin_shortcut")])
        out[VAE_PREFIX + new] = value
    return out


def text_encoder_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPTextModel state dict → `cond_stage_model.transformer.text_model.*`.

    transformers 5 dropped the `text_model.` level from CLIPTextModel's own keys; the original
    checkpoints (transformers 4 era) have it, so it is put back.
    """
    return {
        TEXT_PREFIX + (key if key.startswith("text_model.") else "text_model." + key): value
        for key, value in state.items()
    }


def pipeline_to_ldm(pipeline: Any) -> dict[str, torch.Tensor]:
    """One original-layout state dict for an SD-1 pipeline (UNet + VAE + text encoder)."""
    state = unet_to_ldm(pipeline.unet.state_dict(), dict(pipeline.unet.config))
    state.update(vae_to_ldm(pipeline.vae.state_dict(), dict(pipeline.vae.config)))
    state.update(text_encoder_to_ldm(pipeline.text_encoder.state_dict()))
    # extras real SD-1 files carry and the loader must ignore: CLIP's position ids and the
    # DDPM schedule buffers of the LatentDiffusion wrapper
    length = pipeline.text_encoder.config.max_position_embeddings
    state[TEXT_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(length)[None]
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    state["betas"] = betas
    state["alphas_cumprod"] = torch.cumprod(1 - betas, dim=0)
    return {key: value.detach().contiguous().clone() for key, value in state.items()}
