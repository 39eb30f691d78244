"""VAE-latent and text-encoder caches on disk, shared by every job on the same model and dataset.

A cache file's name is its key: model fingerprint (the VAE / text-encoder weights themselves, so
two catalogue names for one file share it and a changed file never hits a stale cache), dataset
fingerprint (file bytes + captions) and, for latents, resolution and bucketing. Whether a cache
may be used at all is decided by `TrainConfig.uses_latent_cache` / `uses_text_cache`: with flips
or crop jitter the pixels (so the latents) change every step; with caption dropout/shuffle,
embeddings or a trained text encoder the text states do. Held-out images are not in the training
fingerprint: their latents are encoded once per job (`trainer.heldout.HeldoutSet`).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from storage.fsutil import atomic_path
from trainer.architectures.base import TextConditioning
from trainer.data import Example, load_pixels

__all__ = [
    "TextConditioning", "encode_images", "encode_prompts", "latent_cache", "park_text_encoders",
    "text_cache", "text_encoders_back",
]  # fmt: skip


def model_fingerprint(model: Any) -> str:
    """Content id of the VAE and text encoders (float64 sum per tensor): cheap, path-independent."""
    digest = hashlib.sha256(model.architecture.encode())
    for module in (model.vae, *model.text_encoders):
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            if tensor.is_floating_point():
                digest.update(f"{tensor.double().sum().item():.10e}".encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------- encoders (one place each)


@torch.no_grad()
def encode_images(vae: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Shifted and scaled latents of a pixel batch in [-1, 1]: (mean − shift) × scale, as the
    pipelines decode them (SD's VAEs have no shift; FLUX.1's 16-channel VAE has one).

    The posterior's mean, not a sample: the VAE variance is negligible, and the mean keeps a
    cached and an uncached run identical (and a resumed run identical to an uninterrupted one).
    """
    pixels = pixels.to(device=vae.device, dtype=vae.dtype)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (vae.encode(pixels).latent_dist.mean - shift) * vae.config.scaling_factor


def encode_prompts(model: Any, captions: list[str]) -> TextConditioning:
    """Text-encoder outputs as the model's pipeline computes them (`Architecture.encode_prompts`).

    Runs with gradients when the caller enables them (embedding / text-encoder training).
    """
    return model.arch.encode_prompts(model, captions)


# ---------------------------------------------------------------- cache files


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _load(path: Path, count: int) -> dict[str, list[torch.Tensor]] | None:
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged cache is rebuilt, never trusted
        return None
    return data if len(next(iter(data.values()), [])) == count else None


def latent_cache(
    model: Any, examples: list[Example], cache_file: Path
) -> tuple[list[torch.Tensor], bool]:
    """Latents of every example (CPU), from `cache_file` or encoded and saved; (latents, hit)."""
    cached = _load(cache_file, len(examples))
    if cached is not None:
        return cached["latents"], True
    latents = [
        encode_images(model.vae, load_pixels(example)[None])[0].cpu() for example in examples
    ]
    _atomic_save({"latents": latents}, cache_file)
    return latents, False


def text_cache(
    model: Any, captions: list[str], cache_file: Path, batch_size: int = 16
) -> tuple[list[TextConditioning], bool]:
    """Encoder outputs of every caption (CPU), from `cache_file` or encoded now and saved."""
    cached = _load(cache_file, len(captions))
    if cached is None:
        hidden: list[torch.Tensor] = []
        pooled: list[torch.Tensor] = []
        with torch.no_grad():
            for start in range(0, len(captions), batch_size):
                out = encode_prompts(model, captions[start : start + batch_size])
                hidden += list(out.hidden.float().cpu())
                if out.pooled is not None:
                    pooled += list(out.pooled.float().cpu())
        cached = {"hidden": hidden, "pooled": pooled}
        _atomic_save(cached, cache_file)
        hit = False
    else:
        hit = True
    pooled_list = cached["pooled"] or [None] * len(captions)
    return [TextConditioning(h, p) for h, p in zip(cached["hidden"], pooled_list, strict=True)], hit


def cache_files(
    cache_dir: Path, model_key: str, dataset_key: str, resolution: int, bucketing: bool
) -> tuple[Path, Path]:
    """(latent file, text file) for one model × dataset × resolution."""
    root = Path(cache_dir) / "train-cache" / model_key
    latents = root / f"latents-{dataset_key}-{resolution}{'-b' if bucketing else ''}.pt"
    return latents, root / f"text-{dataset_key}.pt"


# ---------------------------------------------------------------- text encoders off the GPU


def park_text_encoders(model: Any) -> torch.device | None:
    """Once every caption's states are cached, the text encoders (FLUX.1's T5-XXL: 9.5 GB in
    bf16) leave the accelerator until a checkpoint needs them; returns where they were (None on
    CPU, where there is nothing to free)."""
    device = model.device
    if device.type == "cpu":
        return None
    for encoder in model.text_encoders:
        encoder.to("cpu")
    return device


@contextlib.contextmanager
def text_encoders_back(model: Any, device: torch.device | None) -> Iterator[None]:
    """The parked text encoders on `device` for a moment (held-out loss, validation grids)."""
    if device is None:
        yield
        return
    for encoder in model.text_encoders:
        encoder.to(device)
    try:
        yield
    finally:
        for encoder in model.text_encoders:
            encoder.to("cpu")
