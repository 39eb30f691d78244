"""FLUX.1-dev LoRA training speed and peak memory, sized from the real config, random weights.

    python bench/gpu_flux.py            # on a CUDA GPU: FLUX.1-dev shapes, 1024 px, rank 16
    python bench/gpu_flux.py --smoke    # anywhere: the same code on tiny shapes (CPU)

Nothing is downloaded: the transformer is built from FLUX.1-dev's published config
(19 double + 38 single blocks, 24 heads × 128, joint 4096, pooled 768, 64 input channels,
guidance embedding) with random bf16 weights, directly on the device. Each step is Atelier's
real objective (`trainer.architectures.flux1`: logit-normal σ with dev's dynamic shift, packed
latents, guidance 3.5) with peft LoRA on every attention and MLP layer of the blocks — the
layers Atelier trains. Text states are random tensors of T5/CLIP shape: the text encoders are
parked off the GPU once cached, so they are not part of the training peak.

Prints one JSON object: for each variant (gradient checkpointing on — Atelier's setting for
real cards — and off as the baseline) the steps per second and the peak CUDA memory. The goal
in issue #14: ≤ 24 GB peak and ≥ 1.4 it/s at 1024 px, batch 1, rank 16 on a 4090-class card.
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

FLUX_DEV = {
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
    "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": (16, 56, 56),
}  # fmt: skip
"""black-forest-labs/FLUX.1-dev transformer/config.json."""
TINY = {
    "patch_size": 1, "in_channels": 16, "num_layers": 2, "num_single_layers": 2,
    "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
    "pooled_projection_dim": 32, "guidance_embeds": True, "axes_dims_rope": (4, 4, 8),
}  # fmt: skip


def build(shape: dict, device: torch.device, dtype: torch.dtype, rank: int) -> SimpleNamespace:
    """A frozen transformer with a rank-`rank` LoRA, wrapped as the architecture expects."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from peft import LoraConfig

    arch = get_architecture("flux1")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            transformer = FluxTransformer2DModel(**shape)
    finally:
        torch.set_default_dtype(previous)
    transformer.requires_grad_(False)
    config = SimpleNamespace(targets="attention")
    targets = arch.target_modules("transformer", transformer, config)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets))
    params = [p for n, p in transformer.named_parameters() if "lora_" in n]
    for param in params:
        param.data = param.data.float()
        param.requires_grad_(True)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )  # fmt: skip
    model = SimpleNamespace(
        denoiser=transformer,
        pipeline=SimpleNamespace(vae_scale_factor=8),
        noise_scheduler=scheduler,
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
    channels = transformer.config.in_channels // 4
    latent = side // 8
    generator = torch.Generator().manual_seed(0)
    cfg = SimpleNamespace()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = 0.0
    for step in range(steps + 2):
        if step == 2:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
        latents = torch.randn(1, channels, latent, latent, generator=generator).to(device)
        text = TextConditioning(
            torch.randn(1, tokens, transformer.config.joint_attention_dim).to(device),
            torch.randn(1, transformer.config.pooled_projection_dim).to(device),
        )
        noise = torch.randn(latents.shape, generator=generator).to(device)
        sigma = arch.sample_timesteps(model, cfg, latents, generator)
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
    shape = TINY if smoke else FLUX_DEV
    side = args.side or (64 if smoke else 1024)
    tokens = 32 if smoke else 512
    steps = args.steps or (3 if smoke else 10)
    if smoke:
        torch.set_num_threads(1)
    model = build(shape, device, dtype, args.rank)
    results = [run(model, side, tokens, steps, checkpointing) for checkpointing in (True, False)]
    report = {
        "bench": "gpu_flux",
        "mode": "smoke" if smoke else "flux1-dev",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "resolution": side,
        "rank": args.rank,
        "batch_size": 1,
        "t5_tokens": tokens,
        "trainable_parameters": sum(p.numel() for p in model.params),
        "variants": results,
        "goal": {"peak_memory_gb_max": 24, "steps_per_second_min": 1.4},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
