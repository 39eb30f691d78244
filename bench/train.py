"""Training-loop benchmark: prints one JSON object.

    python bench/train.py [--steps 30] [--device cpu|cuda]

CPU (default): the tiny model and a mid-size model (UNet block_out_channels (64, 128, 256)),
for LoRA, DoRA and embedding: steps/s of `train()`, the share of step time spent in the UNet
forward + backward + optimizer step (the rest is overhead this project owns: batching, caches,
text encoding, NaN checks, bookkeeping), peak RSS, and a plain diffusers + peft loop without
caches on the same model and batch for comparison. `--device cuda` uses SD 1.5- and SDXL-sized
UNets with random weights at 512 / 1024 px and reports steps/s and peak VRAM.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

# run as a script: the repository first, not bench/ (whose module names shadow the stdlib)
sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402

from tests.trainer.train_helpers import make_dataset, tiny_config  # noqa: E402
from trainer import adapters, caches, loop  # noqa: E402
from trainer.architectures.sd1 import tokenize  # noqa: E402
from trainer.callbacks import RecordingCallbacks  # noqa: E402

CUDA_SHAPES = {
    "sd15-512": {"block_out_channels": (320, 640, 1280, 1280), "cross": 768, "resolution": 512},
    "sdxl-1024": {"block_out_channels": (320, 640, 1280), "cross": 2048, "resolution": 1024},
}


def build_mid_model(folder: Path) -> Path:
    """The tiny pipeline with a wider UNet (64, 128, 256), saved as a diffusers folder."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from trainer.tiny_model import _sd1_components

    torch.manual_seed(0)
    parts = _sd1_components()
    parts["unet"] = UNet2DConditionModel(
        sample_size=32, block_out_channels=(64, 128, 256), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8,
    )  # fmt: skip
    pipe = StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.save_pretrained(folder)
    return folder


def core_seconds_per_step(model, config, params, batch, captions, steps: int) -> float:
    """UNet forward + backward + optimizer step only (plus text encoding for embeddings)."""
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    for i in range(steps + 2):
        if i == 2:
            started = time.perf_counter()
        if config.method == "embedding":  # the gradient runs through the text encoder
            batch.text = caches.encode_prompts(model, captions)
        loss = loop.micro_batch_loss(model, config, batch, generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - started) / steps


def plain_loop_steps_per_second(model, config, examples, params, steps: int) -> float:
    """A diffusers-example-style loop: encode images and captions every step, no caches."""
    from trainer.data import load_pixels

    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scheduler = model.noise_scheduler
    chosen = examples[: config.batch_size]
    for i in range(steps + 2):
        if i == 2:
            started = time.perf_counter()
        pixels = torch.stack([load_pixels(e) for e in chosen])
        with torch.no_grad():
            latents = (
                model.vae.encode(pixels).latent_dist.sample() * model.vae.config.scaling_factor
            )
        ids = tokenize(model.tokenizers[0], [e.caption for e in chosen])
        with torch.set_grad_enabled(config.method == "embedding"):
            hidden = model.text_encoders[0](ids)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (latents.shape[0],))
        prediction = model.unet(scheduler.add_noise(latents, noise, t), t, hidden).sample
        torch.nn.functional.mse_loss(prediction, noise).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps / (time.perf_counter() - started)


def bench_cpu(steps: int) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(tempfile.mkdtemp(prefix="atelier-bench-"))
    results: dict = {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "steps": steps,
        "models": {},
    }
    try:
        dataset = make_dataset(work / "data", count=4, size=64)
        models = {"tiny": "tiny", "mid (64,128,256)": str(build_mid_model(work / "mid"))}
        for label, base in models.items():
            rows = {}
            for method in ("lora", "dora", "embedding"):
                config = tiny_config(
                    method=method, base_model=base, steps=steps, checkpoint_every=steps,
                    resolution=64,
                    batch_size=2, validation={"steps": 1, "seeds": [1], "prompts": ["{trigger}"]},
                )  # fmt: skip
                seen: dict = {}
                inject = adapters.inject_adapter

                def spy(model, cfg, seen=seen, inject=inject):
                    params = inject(model, cfg)
                    seen.update(model=model, params=params)
                    return params

                adapters.inject_adapter = spy
                callbacks = RecordingCallbacks()
                try:
                    loop.train(config, dataset, work / f"out-{label}-{method}", callbacks,
                               cache_dir=work / "cache", device="cpu", resume=False)  # fmt: skip
                finally:
                    adapters.inject_adapter = inject
                rate = callbacks.progress[-1].steps_per_second
                model, params = seen["model"], seen["params"]
                examples = loop.load_examples(dataset, config)
                token = loop.embedding_prompt(model, config)
                batch = loop.make_batch(model, config, examples, [0, 1], 0, None, None, token)
                batch.text.hidden = batch.text.hidden.detach()
                captions = [f"{token or 'ohwx'}, a photo"] * 2
                core = core_seconds_per_step(model, config, params, batch, captions, steps=10)
                rows[method] = {
                    "steps_per_second": round(rate, 2),
                    "unet_fwd_bwd_optimizer_share": round(min(1.0, core * rate), 3),
                    "plain_diffusers_peft_steps_per_second": round(
                        plain_loop_steps_per_second(model, config, examples, params, steps=10), 2
                    ),
                }
            results["models"][label] = rows
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return results


def bench_cuda(steps: int) -> dict:
    """SD 1.5 / SDXL-sized UNets (random weights), LoRA r16, bf16: steps/s and peak VRAM."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    out: dict = {"device": torch.cuda.get_device_name(0), "steps": steps, "shapes": {}}
    for name, shape in CUDA_SHAPES.items():
        torch.cuda.reset_peak_memory_stats()
        sdxl = name.startswith("sdxl")
        unet = UNet2DConditionModel(
            block_out_channels=shape["block_out_channels"],
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
            + (() if sdxl else ("DownBlock2D",)),
            up_block_types=(() if sdxl else ("UpBlock2D",))
            + ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=shape["cross"],
            transformer_layers_per_block=(1, 2, 10) if sdxl else 1,
            attention_head_dim=(5, 10, 20) if sdxl else 8,
            use_linear_projection=sdxl,
            addition_embed_type="text_time" if sdxl else None,
            addition_time_embed_dim=256 if sdxl else None,
            projection_class_embeddings_input_dim=2816 if sdxl else None,
        ).to("cuda", torch.bfloat16)
        unet.requires_grad_(False)
        unet.add_adapter(
            LoraConfig(r=16, lora_alpha=16, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
        )
        params = [p for p in unet.parameters() if p.requires_grad]
        for p in params:
            p.data = p.data.float()
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        side = shape["resolution"] // 8
        x = torch.randn(4 if not sdxl else 2, 4, side, side, device="cuda")
        hidden = torch.randn(x.shape[0], 77, shape["cross"], device="cuda")
        extra = {}
        if sdxl:
            extra["added_cond_kwargs"] = {
                "text_embeds": torch.randn(x.shape[0], 1280, device="cuda"),
                "time_ids": torch.tensor(
                    [[1024, 1024, 0, 0, 1024, 1024]] * x.shape[0], device="cuda"
                ),
            }
        for i in range(steps + 3):
            if i == 3:
                torch.cuda.synchronize()
                started = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                t = torch.randint(0, 1000, (x.shape[0],), device="cuda")
                loss = unet(x, t, hidden, **extra).sample.float().pow(2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        out["shapes"][name] = {
            "batch": x.shape[0],
            "steps_per_second": round(steps / (time.perf_counter() - started), 2),
            "peak_vram_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 2),
        }
        del unet, optimizer, params
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "--device cuda: no CUDA GPU is available on this machine"}))
        return 2
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    result = bench_cuda(args.steps) if args.device == "cuda" else bench_cpu(args.steps)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
