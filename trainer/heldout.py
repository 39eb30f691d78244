"""Held-out images: the split, the held-out loss at every checkpoint, and the overfitting signal.

The split itself is `storage.ingest.split` (standard library; ingest writes it into
`captions.jsonl`), re-exported here so the trainer recomputes it with the same function when a
job asks for another fraction.

The held-out loss is the plain denoising MSE of the model's own objective (ε / v for SD, the
flow velocity for FLUX.1) on the held-out images at FIXED timesteps (evenly spaced over the
schedule: `Architecture.fixed_timesteps`) with FIXED noise (a generator seeded by image file
name and timestep, not by the job's seed), computed without gradients with the model in eval
mode. It therefore changes only when the weights change: it is comparable across the checkpoints
of one job and across jobs on the same dataset (at one resolution). It is deliberately
unweighted (no min-SNR, no noise offset), so jobs with different loss settings still compare.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Sequence
from typing import Any

import torch

from storage.ingest.split import (
    DEFAULT_HELDOUT_FRACTION,
    MIN_IMAGES_FOR_HELDOUT,
    heldout_count,
    heldout_files,
    split_of,
)

__all__ = [
    "DEFAULT_HELDOUT_FRACTION",
    "HELDOUT_TIMESTEPS",
    "MIN_IMAGES_FOR_HELDOUT",
    "HeldoutSet",
    "fixed_timesteps",
    "heldout_count",
    "heldout_files",
    "heldout_loss",
    "overfitting_from",
    "split_of",
]

HELDOUT_TIMESTEPS = 8


def fixed_timesteps(num_train_timesteps: int, count: int = HELDOUT_TIMESTEPS) -> list[int]:
    """`count` timesteps evenly spread over a DDPM schedule (centres of equal slices)."""
    return [int((k + 0.5) * num_train_timesteps / count) for k in range(count)]


def noise_seed(file: str, timestep: float) -> int:
    """A seed per (image, timestep) that no job setting changes."""
    digest = hashlib.sha256(f"atelier-heldout-noise\n{file}\n{timestep}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


class HeldoutSet:
    """The held-out images' latents (encoded once: the VAE is frozen) and their fixed noise."""

    def __init__(self, model: Any, examples: Sequence[Any]) -> None:
        from trainer.caches import encode_images
        from trainer.data import load_pixels

        self.examples = list(examples)
        self.timesteps = model.arch.fixed_timesteps(model, HELDOUT_TIMESTEPS)
        self.latents: list[torch.Tensor] = []
        self.noise: list[torch.Tensor] = []
        for example in self.examples:
            latent = encode_images(model.vae, load_pixels(example)[None])[0].float().cpu()
            self.latents.append(latent)
            key = example.file or example.path.name
            self.noise.append(
                torch.stack(
                    [
                        torch.randn(
                            latent.shape,
                            generator=torch.Generator().manual_seed(noise_seed(key, t)),
                        )
                        for t in self.timesteps
                    ]
                )
            )

    def __len__(self) -> int:
        return len(self.examples)


@torch.no_grad()
def heldout_loss(
    model: Any,
    heldout: HeldoutSet,
    captions: Sequence[str],
    autocast: Any | None = None,
) -> float | None:
    """Mean denoising MSE over held-out images × fixed timesteps; None without held-out images.

    `captions` are the images' prompts as the model reads them now (an embedding's learned
    token included); `autocast` is the training precision context (None: full precision).
    """
    from trainer.architectures.base import TextConditioning
    from trainer.caches import encode_prompts

    if not len(heldout):
        return None
    arch, device = model.arch, model.device
    modules = [model.denoiser, *model.text_encoders]
    was_training = [module.training for module in modules]
    for module in modules:
        module.eval()
    try:
        timesteps = torch.tensor(heldout.timesteps, device=device)
        total, count = 0.0, 0
        context = autocast if autocast is not None else contextlib.nullcontext()
        with context:  # entered once around all images (a context object is single-use)
            for index, (latent, noise) in enumerate(
                zip(heldout.latents, heldout.noise, strict=True)
            ):
                latents = latent[None].expand(len(timesteps), *latent.shape).to(device)
                noisy, target = arch.noisy_and_target(model, latents, noise.to(device), timesteps)
                text = encode_prompts(model, [captions[index]])
                text = TextConditioning(
                    text.hidden.expand(len(timesteps), *text.hidden.shape[1:]),
                    None
                    if text.pooled is None
                    else text.pooled.expand(len(timesteps), *text.pooled.shape[1:]),
                )
                prediction = arch.predict(model, noisy, timesteps, text)
                loss = torch.nn.functional.mse_loss(prediction.float(), target.float())
                total += float(loss.item())
                count += 1
        return total / count
    finally:
        for module, training in zip(modules, was_training, strict=True):
            module.train(training)


def overfitting_from(history: Sequence[tuple[int, float, float | None]]) -> int | None:
    """The step after which the model overfits, or None.

    `history` is (step, training loss, held-out loss) per checkpoint, in step order. The answer
    is the first checkpoint step after which the held-out loss rose at the next two checkpoints
    in a row while the training loss fell over the same span. Checkpoints without a finite
    held-out or training loss are left out.
    """
    points = [
        (step, train, held)
        for step, train, held in sorted(history, key=lambda item: item[0])
        if held is not None and math.isfinite(held) and math.isfinite(train)
    ]
    for i in range(len(points) - 2):
        (step, train0, held0), (_, _, held1), (_, train2, held2) = points[i : i + 3]
        if held0 < held1 < held2 and train2 < train0:
            return step
    return None
