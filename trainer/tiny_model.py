"""The built-in tiny SD-shaped models: random weights built from configs, no download.

Tests, CI and "fast test" jobs need a real diffusers pipeline without pretrained weights (the
Hub is unreachable). `ensure_tiny_model` builds one once per cache folder, deterministically,
and writes it atomically (temp folder + rename) so two workers never see half a model. The
shapes follow offline.md: small enough to train ~6 steps/s on two CPU cores.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import torch

from trainer.tiny_clip import clip_text_encoder, make_tokenizer, write_bpe_files
from trainer.tiny_parts import save_seeded

Architecture = Literal["sd1", "sdxl", "flux1", "zimage"]

TINY_VERSION = 1
"""Bump when the shapes change: the cache folder name includes it."""

_SEED = 1234
_HIDDEN = 32


def ensure_tiny_model(cache_dir: Path, architecture: Architecture = "sd1") -> Path:
    """Return the folder of the tiny model for `architecture`, building it on first use."""
    if architecture not in ("sd1", "sdxl", "flux1", "zimage"):
        raise ValueError(
            f"unknown tiny architecture {architecture!r} (use 'sd1', 'sdxl', 'flux1' or 'zimage')"
        )
    cache_dir = Path(cache_dir)
    target = cache_dir / f"tiny-{architecture}-v{TINY_VERSION}"
    if (target / "model_index.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache_dir))
    try:
        _build(tmp, architecture)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "model_index.json").is_file():  # lost a race only if the other won
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _build(folder: Path, architecture: Architecture) -> None:
    """Write a complete diffusers pipeline folder (weights, configs, tokenizers, model_index)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if architecture == "flux1":
        from trainer.tiny_flux import build_tiny_flux

        build_tiny_flux(folder)
        write_bpe_files(folder / "tokenizer")
        return
    if architecture == "zimage":
        from trainer.tiny_zimage import build_tiny_zimage

        build_tiny_zimage(folder)
        return

    def make() -> object:
        if architecture == "sd1":
            return StableDiffusionPipeline(
                **_sd1_components(), safety_checker=None, feature_extractor=None,
                requires_safety_checker=False,
            )  # fmt: skip
        return StableDiffusionXLPipeline(**_sdxl_components())

    save_seeded(folder, _SEED, make)
    for sub in ("tokenizer", "tokenizer_2"):
        if (folder / sub).is_dir():
            write_bpe_files(folder / sub)


# ---------------------------------------------------------------- components


def _sd1_components() -> dict[str, object]:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=_HIDDEN,
        attention_head_dim=8,
    )
    tokenizer = make_tokenizer()
    return {
        "unet": unet,
        "vae": _vae(),
        "text_encoder": clip_text_encoder(tokenizer, _HIDDEN, 37),
        "tokenizer": tokenizer,
        "scheduler": training_scheduler(),
    }


def _sdxl_components() -> dict[str, object]:
    """SDXL shape: two encoders, concatenated context (32 + 32), pooled `text_time` conditioning."""
    from diffusers import UNet2DConditionModel

    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * _HIDDEN,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        # 6 time ids (original size, crop, target size) × time_dim + pooled projection
        projection_class_embeddings_input_dim=6 * time_dim + _HIDDEN,
    )
    tokenizer, tokenizer_2 = make_tokenizer(), make_tokenizer()
    return {
        "unet": unet,
        "vae": _vae(),
        "text_encoder": clip_text_encoder(tokenizer, _HIDDEN, 37),
        "text_encoder_2": clip_text_encoder(tokenizer_2, _HIDDEN, 37, with_projection=True),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": training_scheduler(),
    }


def _vae() -> torch.nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=64,
    )


def training_scheduler() -> object:
    """SD 1.x's training noise schedule (DDPM, scaled linear 0.00085–0.012, ε-prediction)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
