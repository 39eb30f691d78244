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

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from storage.fsutil import atomic_path
from trainer.data import Example, load_pixels


@dataclass
class TextConditioning:
    """What the UNet is conditioned on: per-token states and, for SDXL, the pooled embedding."""

    hidden: torch.Tensor  # (batch, tokens, dim)
    pooled: torch.Tensor | None  # (batch, dim) for SDXL


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
    """Scaled latents of a pixel batch in [-1, 1].

    The posterior's mean, not a sample: SD's VAE variance is negligible, and the mean keeps a
    cached and an uncached run identical (and a resumed run identical to an uninterrupted one).
    """
    pixels = pixels.to(device=vae.device, dtype=vae.dtype)
    return vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor


def tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def encode_prompts(model: Any, captions: list[str]) -> TextConditioning:
    """Text-encoder outputs as the pipelines compute them (SDXL: penultimate layers + pooled).

    Runs with gradients when the caller enables them (embedding / text-encoder training).
    """
    device = model.device
    if not model.is_sdxl:
        encoder = model.text_encoders[0]
        ids = tokenize(model.tokenizers[0], captions).to(device)
        return TextConditioning(hidden=encoder(ids)[0], pooled=None)
    states, pooled = [], None
    for tokenizer, encoder in zip(model.tokenizers, model.text_encoders, strict=True):
        output = encoder(tokenize(tokenizer, captions).to(device), output_hidden_states=True)
        states.append(output.hidden_states[-2])
        pooled = output[0]  # the second encoder's projected pooled embedding
    return TextConditioning(hidden=torch.cat(states, dim=-1), pooled=pooled)


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
