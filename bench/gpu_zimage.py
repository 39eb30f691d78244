"""Z-Image LoRA training speed and peak memory, sized from the real config, random weights.

    python bench/gpu_zimage.py            # on a CUDA GPU: Z-Image 6B shapes, 1024 px, rank 16
    python bench/gpu_zimage.py --smoke    # anywhere: the same code on tiny shapes (CPU)

Nothing is downloaded: the transformer is `ZImageTransformer2DModel`'s defaults in diffusers
0.42, which are Z-Image's 6B shapes (dim 3840, 30 layers + 2 noise- and 2 context-refiner
layers, 30 heads, caption features 2560 = Qwen3-4B's hidden size, 16 latent channels, 2×2
patches), built with random bf16 weights directly on the device. Each step is Atelier's real
objective (`trainer.architectures.zimage`: logit-normal σ with the fixed shift 3, t = 1 − σ,
negated output) with peft LoRA on every layer Atelier trains (attention q/k/v/out and the
feed-forward of every block). Caption states are random tensors of Qwen3 shape: the text
encoder is parked off the GPU once cached, so it is not part of the training peak.

Prints one JSON object: for each variant (gradient checkpointing on — Atelier's setting for real
cards — and off as the baseline) steps per second and peak CUDA memory, against issue #14's
24 GB card.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402

from trainer.architectures import get_architecture  # noqa: E402
from trainer.architectures.base import TextConditioning  # noqa: E402

Z_IMAGE: dict = {}
"""diffusers' defaults: Z-Image's 6B transformer."""
TINY = {
    "in_channels": 4, "dim": 32, "n_layers": 2, "n_refiner_layers": 1, "n_heads": 2,
    "n_kv_heads": 2, "cap_feat_dim": 32, "axes_dims": [4, 6, 6], "axes_lens": [256, 64, 64],
}  # fmt: skip
"""`builtin:tiny-zimage`'s transformer (trainer/tiny_zimage.py)."""


def build(shape: dict, device: torch.device, dtype: torch.dtype, rank: int) -> SimpleNamespace:
    """A frozen transformer with a rank-`rank` LoRA, wrapped as the architecture expects."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
    from peft import LoraConfig

    arch = get_architecture("zimage")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            transformer = ZImageTransformer2DModel(**shape)
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
        noise_scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False),
        arch=arch,
    )
    model.params = params
    return model


def run(model: SimpleNamespace, side: int, tokens: int, steps: int, checkpointing: bool) -> dict:
    arch, transformer = model.arch, model.denoiser
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
        shape = (1, transformer.config.in_channels, latent, latent)
        latents = torch.randn(shape, generator=generator).to(device)
        caption = torch.randn(1, tokens, transformer.config.cap_feat_dim, generator=generator)
        text = TextConditioning(caption.to(device), None)
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
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, any device (CPU)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--side", type=int, default=None, help="pixels (default 1024; smoke 64)")
    args = parser.parse_args()
    smoke = args.smoke or not torch.cuda.is_available()
    device = torch.device("cpu" if smoke else "cuda")
    dtype = torch.float32 if smoke else torch.bfloat16
    side = args.side or (64 if smoke else 1024)
    tokens = 16 if smoke else 128  # a typical caption's Qwen3 tokens, chat template included
    steps = args.steps or (3 if smoke else 10)
    if smoke:
        torch.set_num_threads(1)
    model = build(TINY if smoke else Z_IMAGE, device, dtype, args.rank)
    results = [run(model, side, tokens, steps, checkpointing) for checkpointing in (True, False)]
    report = {
        "bench": "gpu_zimage",
        "mode": "smoke" if smoke else "z-image-6b",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "resolution": side,
        "rank": args.rank,
        "batch_size": 1,
        "caption_tokens": tokens,
        "trainable_parameters": sum(p.numel() for p in model.params),
        "variants": results,
        "goal": {"peak_memory_gb_max": 24},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
