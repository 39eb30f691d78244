"""Training-loop benchmark: prints one JSON object.

    python bench/train.py [--steps 30] [--rounds 2] [--precisions auto,no,bf16]
                          [--models tiny,mid] [--clock cpu|wall]  # OMP_NUM_THREADS=1 when shared

CPU: the tiny model and a mid-size model (UNet block_out_channels (64, 128, 256)), 64 px,
batch 2, for LoRA, DoRA and embedding: steps/s of `train()` in each mixed precision (`auto`:
what a job that sets none gets, `auto_resolves_to` says which), and of a plain fp32 diffusers +
peft loop (VAE and text encoder every step, peft LoRA / DoRA, default AdamW) on a fresh copy of
the same model, side by side, and the ratio. The plain loop runs in its own Python process, as a
plain script does (our `train()` tunes process-wide settings such as the allocator, which a
plain script would not have). GPUs: bench/gpu.py.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# run as a script: the repository first, not bench/ (whose module names shadow the stdlib)
sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402

from tests.trainer.train_helpers import make_dataset, tiny_config  # noqa: E402
from trainer import adapters, loop  # noqa: E402
from trainer.architectures.sd1 import tokenize  # noqa: E402
from trainer.callbacks import RecordingCallbacks  # noqa: E402
from trainer.data import load_examples  # noqa: E402
from trainer.precision import cpu_auto  # noqa: E402

CLOCK = time.process_time
"""CPU seconds of this process (`--clock wall`: elapsed time). On a shared machine elapsed time
measures the neighbours; CPU time measures the work (with one thread, exactly the step's)."""


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


def plain_model(config, cache: Path):
    """A fresh fp32 model with the adapter as a plain diffusers + peft script adds it: peft LoRA,
    peft DoRA (`use_dora`), or diffusers' textual-inversion token rows."""
    from peft import LoraConfig

    plain = config.model_copy(update={"mixed_precision": "no"})
    model = loop.load_model(plain, cache, torch.device("cpu"), torch.float32, None)
    if config.method == "embedding":
        params = adapters.inject_adapter(model, plain)
    else:
        names = model.arch.target_modules("unet", model.unet, plain)
        lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=names,
                          use_dora=config.method == "dora")  # fmt: skip
        model.unet.add_adapter(lora)
        params = [p for p in model.unet.parameters() if p.requires_grad]
    return model, params


def plain_loop_steps_per_second(config, examples, cache: Path, steps: int) -> float:
    """A diffusers-example-style loop in fp32: encode images and captions every step, no
    caches, torch's default AdamW. Runs in this process: `plain_in_own_process` calls it."""
    from trainer.data import load_pixels

    model, params = plain_model(config, cache)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scheduler = model.noise_scheduler
    chosen = examples[: config.batch_size]
    captions = [f"{loop.embedding_prompt(model, config) or 'ohwx'}, {e.caption}" for e in chosen]
    for i in range(steps + 2):
        if i == 2:
            started = CLOCK()
        pixels = torch.stack([load_pixels(e) for e in chosen])
        with torch.no_grad():
            latents = (
                model.vae.encode(pixels).latent_dist.sample() * model.vae.config.scaling_factor
            )
        ids = tokenize(model.tokenizers[0], captions)
        with torch.set_grad_enabled(config.method == "embedding"):
            hidden = model.text_encoders[0](ids)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (latents.shape[0],))
        prediction = model.unet(scheduler.add_noise(latents, noise, t), t, hidden).sample
        torch.nn.functional.mse_loss(prediction, noise).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps / (CLOCK() - started)


def plain_in_own_process(config, dataset: Path, cache: Path, steps: int) -> float:
    """`plain_loop_steps_per_second` in a fresh Python process (same threads, same clock)."""
    command = [
        sys.executable, str(Path(__file__).resolve()), "--plain", config.model_dump_json(),
        "--dataset", str(dataset), "--cache", str(cache), "--steps", str(steps),
        "--clock", "wall" if CLOCK is time.perf_counter else "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"plain loop failed: {done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def run_plain(config_json: str, dataset: Path, cache: Path, steps: int) -> float:
    """The child side of `plain_in_own_process`."""
    from trainer.config import TrainConfig

    config = TrainConfig.model_validate_json(config_json)
    return plain_loop_steps_per_second(config, load_examples(dataset, config), cache, steps)


def denoiser_params(base: str, cache: Path) -> int:
    plain = loop.load_model(
        tiny_config(base_model=base), cache, torch.device("cpu"), torch.float32, None
    )
    return sum(p.numel() for p in plain.denoiser.parameters())


class StepClock(RecordingCallbacks):
    """The clock at every step's progress report (a checkpoint comes after its report)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def on_progress(self, progress) -> None:
        self.times.append(CLOCK())
        super().on_progress(progress)


def our_steps_per_second(config, dataset: Path, out: Path, cache: Path) -> float:
    """`train()` as a job runs it (caches, bookkeeping): steps 2…N, like the plain loop's
    timed steps after its warm-up; checkpoints are not counted."""
    callbacks = StepClock()
    loop.train(config, dataset, out, callbacks, cache_dir=cache, device="cpu", resume=False)
    shutil.rmtree(out, ignore_errors=True)
    return (len(callbacks.times) - 1) / (callbacks.times[-1] - callbacks.times[0])


def bench_cpu(steps: int, rounds: int, precisions: list[str], models: list[str]) -> dict:
    """Our loop in each precision and the plain loop, alternated `rounds` times; best of each
    (the CPU is shared: alternating keeps the ratio fair when the load changes)."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(tempfile.mkdtemp(prefix="atelier-bench-"))
    results: dict = {
        "device": "cpu", "threads": torch.get_num_threads(), "steps": steps, "rounds": rounds,
        "clock": "wall" if CLOCK is time.perf_counter else "cpu (process time)",
        "models": {},
    }  # fmt: skip
    try:
        dataset = make_dataset(work / "data", count=4, size=64)
        bases = {"tiny": "tiny", "mid": str(build_mid_model(work / "mid"))}
        for label in models:
            size = denoiser_params(bases[label], work / "cache")
            rows = {"denoiser_params": size, "auto_resolves_to": cpu_auto(size)}
            for method in ("lora", "dora", "embedding"):
                config = tiny_config(
                    method=method, base_model=bases[label], steps=steps, checkpoint_every=steps,
                    resolution=64, heldout_fraction=0.0, batch_size=2,
                    validation={"steps": 1, "seeds": [1], "prompts": ["{trigger}"]},
                )  # fmt: skip
                best: dict[str, float] = {}
                for _ in range(rounds):
                    for precision in precisions:
                        ours = config.model_copy(update={"mixed_precision": precision})
                        rate = our_steps_per_second(ours, dataset, work / "out", work / "cache")
                        best[precision] = max(best.get(precision, 0.0), rate)
                    rate = plain_in_own_process(config, dataset, work / "cache", steps)
                    best["plain"] = max(best.get("plain", 0.0), rate)
                row = {f"ours_{p}_steps_per_second": round(best[p], 2) for p in precisions}
                row["plain_diffusers_peft_fp32_steps_per_second"] = round(best["plain"], 2)
                row |= {f"speedup_{p}": round(best[p] / best["plain"], 2) for p in precisions}
                rows[method] = row
            results["models"][label] = rows
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precisions", default="auto,no,bf16", help="our loop's precisions")
    parser.add_argument("--models", default="tiny,mid")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--plain", help=argparse.SUPPRESS)  # the child: one plain loop's rate
    parser.add_argument("--dataset", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    if args.plain:
        torch.set_num_threads(max(1, torch.get_num_threads()))
        print(run_plain(args.plain, args.dataset, args.cache, args.steps))
        return 0
    result = bench_cpu(args.steps, args.rounds, args.precisions.split(","), args.models.split(","))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
