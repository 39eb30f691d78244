"""FLUX.1-dev / Z-Image LoRA training speed and peak memory, sized from the real configs, random
weights.

    python bench/gpu_transformer.py --arch flux1           # CUDA: FLUX.1-dev, 1024 px, rank 16
    python bench/gpu_transformer.py --arch zimage          # CUDA: Z-Image 6B, 1024 px, rank 16
    python bench/gpu_transformer.py --arch zimage --smoke  # anywhere: the same code, tiny shapes

Nothing is downloaded: the transformer is built with random bf16 weights, directly on the device,
from the published shapes:

- `flux1`: FLUX.1-dev's config (19 double + 38 single blocks, 24 heads × 128, joint 4096, pooled
  768, 64 input channels, guidance embedding); text states are random tensors of T5/CLIP shape;
- `zimage`: `ZImageTransformer2DModel`'s defaults in diffusers 0.42, which are Z-Image's 6B
  shapes (dim 3840, 30 layers + 2 noise- and 2 context-refiner layers, 30 heads, caption
  features 2560 = Qwen3-4B's hidden size, 16 latent channels, 2×2 patches); caption states are
  random tensors of Qwen3 shape.

The text encoders are parked off the GPU once captions are cached, so they are not part of the
training peak. Each step is Atelier's real objective (`trainer.architectures`: logit-normal σ
with the model's own shift — dev's dynamic one, Z-Image's fixed 3 —, FLUX.1's packed latents
and guidance 3.5, Z-Image's t = 1 − σ and negated output) with peft LoRA on every layer Atelier
trains.

Prints one JSON object: for each variant (gradient checkpointing on — Atelier's setting for
real cards — and off as the baseline) the steps per second and the peak CUDA memory, against
issue #14's goal: ≤ 24 GB peak (and, for FLUX.1, ≥ 1.4 it/s) at 1024 px, batch 1, rank 16 on a
4090-class card.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402

from trainer.architectures import get_architecture  # noqa: E402
from trainer.architectures.base import TextConditioning  # noqa: E402


def flux_latents(config, latent: int, generator: torch.Generator) -> torch.Tensor:
    """FLUX.1's transformer takes 2×2-packed latents: in_channels = 4 × latent channels."""
    return torch.randn(1, config.in_channels // 4, latent, latent, generator=generator)


def flux_text(config, tokens: int, generator: torch.Generator) -> TextConditioning:
    return TextConditioning(
        torch.randn(1, tokens, config.joint_attention_dim),
        torch.randn(1, config.pooled_projection_dim),
    )


def zimage_latents(config, latent: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(1, config.in_channels, latent, latent, generator=generator)


def zimage_text(config, tokens: int, generator: torch.Generator) -> TextConditioning:
    caption = torch.randn(1, tokens, config.cap_feat_dim, generator=generator)
    return TextConditioning(caption, None)


@dataclass(frozen=True)
class Spec:
    """One architecture's shapes and inputs for the bench."""

    transformer: str
    """The diffusers transformer class."""
    real: dict
    tiny: dict
    scheduler: dict
    """The training scheduler's config (the model's own)."""
    mode: str
    tokens: tuple[int, int]
    """Text tokens per caption: (smoke, real)."""
    tokens_key: str
    goal: dict
    latents: Callable[..., torch.Tensor]
    text: Callable[..., TextConditioning]


SPECS = {
    "flux1": Spec(
        transformer="FluxTransformer2DModel",
        real={  # black-forest-labs/FLUX.1-dev transformer/config.json
            "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
            "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
            "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": (16, 56, 56),
        },
        tiny={  # builtin:tiny-flux's transformer (trainer/tiny_flux.py)
            "patch_size": 1, "in_channels": 16, "num_layers": 2, "num_single_layers": 2,
            "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
            "pooled_projection_dim": 32, "guidance_embeds": True, "axes_dims_rope": (4, 4, 8),
        },
        scheduler={
            "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
            "base_image_seq_len": 256, "max_image_seq_len": 4096,
        },
        mode="flux1-dev",
        tokens=(32, 512),
        tokens_key="t5_tokens",
        goal={"peak_memory_gb_max": 24, "steps_per_second_min": 1.4},
        latents=flux_latents,
        text=flux_text,
    ),
    "zimage": Spec(
        transformer="ZImageTransformer2DModel",
        real={},  # diffusers' defaults: Z-Image's 6B transformer
        tiny={  # builtin:tiny-zimage's transformer (trainer/tiny_zimage.py)
            "in_channels": 4, "dim": 32, "n_layers": 2, "n_refiner_layers": 1, "n_heads": 2,
            "n_kv_heads": 2, "cap_feat_dim": 32, "axes_dims": [4, 6, 6],
            "axes_lens": [256, 64, 64],
        },
        scheduler={"shift": 3.0, "use_dynamic_shifting": False},
        mode="z-image-6b",
        tokens=(16, 128),  # a typical caption's Qwen3 tokens, chat template included
        tokens_key="caption_tokens",
        goal={"peak_memory_gb_max": 24},
        latents=zimage_latents,
        text=zimage_text,
    ),
}  # fmt: skip


def build(
    name: str, shape: dict, device: torch.device, dtype: torch.dtype, rank: int
) -> SimpleNamespace:
    """A frozen transformer with a rank-`rank` LoRA, wrapped as the architecture expects."""
    import diffusers
    from peft import LoraConfig

    arch, spec = get_architecture(name), SPECS[name]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            transformer = getattr(diffusers, spec.transformer)(**shape)
    finally:
        torch.set_default_dtype(previous)
    transformer.requires_grad_(False)
    targets = arch.target_modules("transformer", transformer, SimpleNamespace())
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets))
    params = [p for n, p in transformer.named_parameters() if "lora_" in n]
    for param in params:
        param.data = param.data.float()
        param.requires_grad_(True)
    model = SimpleNamespace(
        denoiser=transformer,
        pipeline=SimpleNamespace(vae_scale_factor=8),
        noise_scheduler=diffusers.FlowMatchEulerDiscreteScheduler(**spec.scheduler),
        arch=arch,
        spec=spec,
    )
    model.params = params
    return model


def run(model: SimpleNamespace, side: int, tokens: int, steps: int, checkpointing: bool) -> dict:
    arch, transformer, spec = model.arch, model.denoiser, model.spec
    if checkpointing:
        transformer.enable_gradient_checkpointing()
    else:
        transformer.disable_gradient_checkpointing()
    transformer.train()
    device = next(transformer.parameters()).device
    optimizer = torch.optim.AdamW(model.params, lr=1e-4)
    latent = side // 8
    generator = torch.Generator().manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = 0.0
    for step in range(steps + 2):
        if step == 2:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
        latents = spec.latents(transformer.config, latent, generator).to(device)
        cpu_text = spec.text(transformer.config, tokens, generator)
        pooled = None if cpu_text.pooled is None else cpu_text.pooled.to(device)
        text = TextConditioning(cpu_text.hidden.to(device), pooled)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        sigma = arch.sample_timesteps(model, SimpleNamespace(), latents, generator)
        noisy, target = arch.noisy_and_target(model, latents, noise, sigma)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            prediction = arch.predict(model, noisy, sigma, text)
        loss = torch.nn.functional.mse_loss(prediction.float(), target.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    result = {
        "gradient_checkpointing": checkpointing,
        "steps_per_second": round(steps / seconds, 3),
        "loss": round(float(loss.detach()), 4),
    }
    if device.type == "cuda":
        result["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=sorted(SPECS), required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, any device (CPU)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--side", type=int, default=None, help="pixels (default 1024; smoke 64)")
    args = parser.parse_args()
    spec = SPECS[args.arch]
    smoke = args.smoke or not torch.cuda.is_available()
    device = torch.device("cpu" if smoke else "cuda")
    dtype = torch.float32 if smoke else torch.bfloat16
    side = args.side or (64 if smoke else 1024)
    tokens = spec.tokens[0 if smoke else 1]
    steps = args.steps or (3 if smoke else 10)
    if smoke:
        torch.set_num_threads(1)
    model = build(args.arch, spec.tiny if smoke else spec.real, device, dtype, args.rank)
    results = [run(model, side, tokens, steps, checkpointing) for checkpointing in (True, False)]
    report = {
        "bench": "gpu_transformer",
        "arch": args.arch,
        "mode": "smoke" if smoke else spec.mode,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "resolution": side,
        "rank": args.rank,
        "batch_size": 1,
        spec.tokens_key: tokens,
        "trainable_parameters": sum(p.numel() for p in model.params),
        "variants": results,
        "goal": spec.goal,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
