"""GPU training benchmark: SD 1.5- and SDXL-sized UNets (random weights), prints one JSON object.

    python bench/gpu.py [--steps 20] [--compile] [--peak-tflops 989]
    python bench/gpu.py --device cpu --tiny --steps 2   # smoke mode: same code, tiny shapes

Each case is one LoRA training step of our loop (`trainer.loop.micro_batch_loss`: noise,
timesteps, min-SNR-weighted loss; `trainer.precision`: bf16 autocast; `trainer.optimizers`:
fused AdamW) on cached latents and text states (random tensors made once, as the caches are),
with SDPA attention (diffusers' default processor), channels_last and TF32. Cases: SD 1.5 at
512 px batch 4 and SDXL at 1024 px batch 1, each with and without gradient checkpointing.

Per case: steps/s, peak VRAM, time to first step (model build → first step done) and model
FLOP utilisation: the FLOPs of one step as torch's FlopCounterMode counts them (forward and the
backward this LoRA step really runs: input gradients through the frozen base, weight
gradients only for the adapter; without recomputation) divided by step time and the device's
dense bf16 peak (`--peak-tflops`, else a table of known GPUs; null when unknown).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository, not bench/

import torch  # noqa: E402

from trainer import adapters, loop  # noqa: E402
from trainer.architectures import get_architecture  # noqa: E402
from trainer.caches import TextConditioning  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.optimizers import make_optimizer  # noqa: E402
from trainer.precision import make_precision  # noqa: E402

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.0}

SD15 = {
    "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768, "attention_head_dim": 8,
}  # fmt: skip
SDXL = {
    "block_out_channels": (320, 640, 1280), "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10), "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048, "use_linear_projection": True,
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}  # fmt: skip
CASES = {"sd15-512-bs4": (SD15, 512, 4), "sdxl-1024-bs1": (SDXL, 1024, 1)}


def tiny(shape: dict) -> dict:
    """The same block structure at a fraction of the width and depth (CPU smoke mode)."""
    small = dict(shape, block_out_channels=tuple(c // 10 for c in shape["block_out_channels"]))
    small["layers_per_block"] = 1
    small["cross_attention_dim"] = 32
    small["norm_num_groups"] = 8
    if "transformer_layers_per_block" in shape:
        small |= {"transformer_layers_per_block": (1, 1, 2), "attention_head_dim": (2, 4, 8)}
        small |= {"addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 80}
    else:
        small["attention_head_dim"] = 4
    return small


def build_unet(shape: dict, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    with torch.device(device):  # parameters are created on the GPU: no 10 GB host copy
        unet = UNet2DConditionModel(**shape)
    return unet.to(dtype=dtype, memory_format=torch.channels_last).requires_grad_(False)


def make_case(shape: dict, side: int, batch: int, device: torch.device) -> tuple:
    """(model namespace, batch, config, params) with cached latents and text states."""
    from diffusers import DDPMScheduler

    config = TrainConfig(rank=16, alpha=16, mixed_precision="bf16")
    precision = make_precision("bf16", device)
    unet = build_unet(shape, device, precision.dtype)
    arch = get_architecture("sdxl" if "addition_embed_type" in shape else "sd1")
    params = adapters._inject_lora(unet, arch.target_modules("unet", unet, config), config)
    model = SimpleNamespace(
        arch=arch, denoiser=unet, unet=unet, text_encoders=[], noise_scheduler=DDPMScheduler(),
        device=device, prediction_type="epsilon", pipeline=SimpleNamespace(vae_scale_factor=8),
    )  # fmt: skip
    cross = shape["cross_attention_dim"]
    latents = torch.randn(batch, 4, side // 8, side // 8, device=device)
    text = TextConditioning(torch.randn(batch, 77, cross, device=device), None)
    if "addition_embed_type" in shape:  # SDXL's size conditioning comes from the latents' shape
        pooled_dim = (
            shape["projection_class_embeddings_input_dim"] - 6 * shape["addition_time_embed_dim"]
        )
        text.pooled = torch.randn(batch, pooled_dim, device=device)
    step_batch = loop.Batch(latents.to(memory_format=torch.channels_last), text)
    return model, step_batch, config, params, precision


def one_step(model, batch, config, params, precision, optimizer, generator) -> None:
    with precision.autocast():
        loss = loop.micro_batch_loss(model, config, batch, generator)
    precision.backward(loss)
    precision.step(optimizer, params, config.max_grad_norm, True)
    optimizer.zero_grad(set_to_none=True)


def step_flops(model, batch, config, params, precision, optimizer) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        one_step(model, batch, config, params, precision, optimizer, torch.Generator())
    return float(counter.get_total_flops())


def run_case(name: str, shape: dict, side: int, batch: int, args, device) -> dict:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    model, step_batch, config, params, precision = make_case(shape, side, batch, device)
    if args.checkpointing:
        model.unet.enable_gradient_checkpointing()
    model.unet.train()
    optimizer = make_optimizer(config, params, model)
    unet = model.unet
    if args.compile:
        model.unet = model.denoiser = torch.compile(unet)
    generator = torch.Generator().manual_seed(0)
    one_step(model, step_batch, config, params, precision, optimizer, generator)
    sync()
    first = time.perf_counter() - started
    for _ in range(args.warmup):
        one_step(model, step_batch, config, params, precision, optimizer, generator)
    sync()
    timed = time.perf_counter()
    for _ in range(args.steps):
        one_step(model, step_batch, config, params, precision, optimizer, generator)
    sync()
    seconds = (time.perf_counter() - timed) / args.steps
    model.unet = model.denoiser = (
        unet  # model FLOPs: eager, without the checkpointing recomputation
    )
    unet.disable_gradient_checkpointing()
    flops = step_flops(model, step_batch, config, params, precision, optimizer)
    peak = args.peak_tflops or peak_tflops(device)
    row = {
        "case": name, "gradient_checkpointing": args.checkpointing, "batch": batch,
        "resolution": side, "tiny_shapes": args.tiny,
        "unet_params_m": round(sum(p.numel() for p in model.unet.parameters()) / 1e6, 1),
        "lora_params_m": round(sum(p.numel() for p in params) / 1e6, 2),
        "steps_per_second": round(1 / seconds, 2),
        "time_to_first_step_s": round(first, 2),
        "step_tflop": round(flops / 1e12, 4),
        "mfu": round(flops / seconds / (peak * 1e12), 4) if peak else None,
        "peak_vram_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 2)
        if device.type == "cuda" else None,
    }  # fmt: skip
    del model, unet, optimizer, params
    return row


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke mode)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA GPU here; use --device cpu --tiny for a smoke run"}))
        return 2
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    rows = []
    for name in args.cases.split(","):
        shape, side, batch = CASES[name]
        if args.tiny:  # same structure, a tenth of the width, an eighth of the side
            shape, side = tiny(shape), side // 8
        for checkpointing in (False, True):
            args.checkpointing = checkpointing
            rows.append(run_case(name, shape, side, batch, args, device))
    out = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "precision": "bf16 autocast, bf16 base, fp32 LoRA r16",
        "compile": args.compile, "peak_bf16_tflops": args.peak_tflops or peak_tflops(device),
        "steps": args.steps, "cases": rows,
    }  # fmt: skip
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
