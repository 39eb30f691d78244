"""What the tiny transformer pipelines (`trainer.tiny_flux`, `trainer.tiny_zimage`) share: a
seeded build written as a diffusers folder, FLUX.1's VAE at toy width (Z-Image reuses FLUX.1's
VAE), and the words their tokenizers make single tokens."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trainer.tiny_clip import _COMMON_WORDS

WORDS = (*_COMMON_WORDS, "red", "blue", "square", "outdoors")
"""Words the tiny text tokenizers keep whole: CLIP's common words and the test captions'."""


def save_seeded(folder: Path, seed: int, make_pipeline: Callable[[], Any]) -> None:
    """Build the pipeline under `seed` (the global RNG is left as it was) and write `folder`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = make_pipeline()
    pipe.save_pretrained(folder, safe_serialization=True)


def flux_vae() -> torch.nn.Module:
    """A 4-channel VAE with FLUX.1's shift and scale that halves the size twice (scale 4)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        shift_factor=0.1159,  # FLUX.1's VAE
        scaling_factor=0.3611,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
