"""Train the built-in toy base model on CPU: a tiny SD-1-shaped pipeline that draws coloured shapes.

    python -m trainer.toy.train_base --out trainer/builtin_models/toy --docs docs/toy-model

Stages (each cached in `--work`, so a re-run resumes after the last finished stage):
1. tokenizer: the CLIP byte-level BPE of `trainer.tiny_model` with merges that make every caption
   word (`shapes.VOCABULARY`) one token;
2. VAE (AutoencoderKL, 4× downsampling: 64 px ↔ 4×16×16 latents) on freshly drawn scenes;
3. latents of a fixed set of scenes, then UNet + text encoder together (ε-prediction, min-SNR 5,
   10 % empty captions for classifier-free guidance, EMA of the weights), for a wall-clock budget;
4. the diffusers folder (fp32 safetensors), then a sample grid and the loss curve in `--docs`.

Deterministic for a given seed and step count (the UNet stage stops at `--unet-steps`, or
earlier when `--unet-minutes` is set, so timings decide how far a budgeted run goes).

Length: a self-contained one-purpose training script (like diffusers' examples), read top
to bottom; splitting it would scatter one recipe.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from storage.drawing import draw_lines, font, wrap
from trainer.tiny_clip import (
    _BOS,
    _COMMON_WORDS,
    _EOS,
    _MAX_LENGTH,
    _bytes_to_unicode,
    clip_text_encoder,
)
from trainer.tiny_model import training_scheduler
from trainer.toy import shapes

SEED = 20240611
HIDDEN = 64
CAPTION_DROPOUT = 0.1


# ---------------------------------------------------------------- tokenizer


def vocab_and_merges(words: tuple[str, ...] = ()) -> tuple[dict[str, int], list[str]]:
    """Byte symbols + `</w>` forms + merges until every word in `words` is a single token."""
    from transformers import CLIPTokenizer

    words = tuple(dict.fromkeys((*shapes.VOCABULARY, *_COMMON_WORDS, *words)))
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []

    def build() -> Any:
        vocab = {t: i for i, t in enumerate([*tokens, _BOS, _EOS])}
        pairs = [tuple(rule.split(" ")) for rule in merges]
        return CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=_MAX_LENGTH)

    for word in words:  # a left-to-right chain per word
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            rule, merged = f"{parts[0]} {parts[1]}", parts[0] + parts[1]
            if rule not in merges:
                merges.append(rule)
                if merged not in tokens:
                    tokens.append(merged)
            parts = [merged, *parts[2:]]
    for _ in range(200):  # earlier merges of other words can split a word: add merges until not
        tokenizer = build()
        broken = [w for w in words if len(tokenizer.tokenize(w)) != 1]
        if not broken:
            break
        for word in broken:
            pieces = tokenizer.tokenize(word)
            rule, merged = f"{pieces[0]} {pieces[1]}", pieces[0] + pieces[1]
            if rule not in merges:
                merges.append(rule)
            if merged not in tokens:
                tokens.append(merged)
    else:
        raise RuntimeError(f"could not make single tokens of {broken}")
    return {t: i for i, t in enumerate([*tokens, _BOS, _EOS])}, merges


def make_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    vocab, merges = vocab_and_merges()
    pairs = [tuple(rule.split(" ")) for rule in merges]
    return CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=_MAX_LENGTH)


# ---------------------------------------------------------------- components


def make_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        sample_size=64,
        mid_block_add_attention=False,
        norm_num_groups=8,  # 32 groups of 32 channels would be instance norm: colours lost
    )


def make_unet() -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=HIDDEN,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def make_text_encoder(tokenizer: Any) -> Any:
    return clip_text_encoder(tokenizer, HIDDEN, 128)


# ---------------------------------------------------------------- data


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    array = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


# ---------------------------------------------------------------- stages


def train_vae(vae: Any, steps: int, seed: int, log: list[dict[str, float]]) -> None:
    """MSE (+ a small L2 on the latents) on freshly drawn scenes (every batch new)."""
    rng = np.random.default_rng(seed + 1)
    torch.manual_seed(seed + 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)

    def factor(s: int) -> float:
        return min(1.0, (s + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    vae.train()
    started = time.monotonic()
    for step in range(1, steps + 1):
        x = to_tensor([shapes.render(shapes.random_scene(rng, concept=rng.random() < 0.05))
                       for _ in range(16)])  # fmt: skip
        # deterministic (the trainer encodes with the posterior mean) with a little latent noise
        # so the decoder tolerates imperfect denoiser outputs; a mild L2 keeps latents bounded
        mean = vae.encode(x).latent_dist.mean
        noisy = mean + 0.05 * mean.detach().std() * torch.randn_like(mean)
        recon = vae.decode(noisy).sample
        mse = torch.nn.functional.mse_loss(recon, x)
        kl = mean.pow(2).mean()
        loss = mse + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        log.append({"step": step, "mse": mse.item(), "kl": kl.item()})
        if step % 25 == 0 or step == steps:
            print(f"vae {step}/{steps} mse {np.mean([r['mse'] for r in log[-25:]]):.4f} "
                  f"l2 {kl.item():.2f} {time.monotonic() - started:.0f}s", flush=True)  # fmt: skip
    vae.eval()


@torch.no_grad()
def encode_latents(vae: Any, images: list[Image.Image]) -> torch.Tensor:
    out = []
    for i in range(0, len(images), 64):
        out.append(vae.encode(to_tensor(images[i : i + 64])).latent_dist.mean)
    return torch.cat(out)


def train_denoiser(
    unet: Any,
    text_encoder: Any,
    tokenizer: Any,
    latents: torch.Tensor,
    scenes: list[shapes.Scene],
    *,
    steps: int,
    minutes: float | None,
    seed: int,
    lr: float,
    batch_size: int,
    log: list[dict[str, float]],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """UNet + text encoder on cached latents; returns EMA state dicts and the steps done."""
    scheduler = training_scheduler()
    torch.manual_seed(seed + 2)
    rng = np.random.default_rng(seed + 2)
    generator = torch.Generator().manual_seed(seed + 2)
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    total = steps

    def factor(s: int) -> float:
        warm = min(1.0, (s + 1) / 200)
        return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    ema = {k: v.detach().clone() for k, v in _named(unet, text_encoder).items()}
    alphas = scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    weights = torch.clamp(snr, max=5.0) / snr  # min-SNR-5 for ε-prediction
    token_cache: dict[str, torch.Tensor] = {}

    def ids(captions: list[str]) -> torch.Tensor:
        for c in captions:
            if c not in token_cache:
                token_cache[c] = tokenizer(
                    c, padding="max_length", max_length=_MAX_LENGTH, truncation=True,
                    return_tensors="pt",
                ).input_ids[0]  # fmt: skip
        return torch.stack([token_cache[c] for c in captions])

    unet.train()
    text_encoder.train()
    started = time.monotonic()
    step = 0
    for step in range(1, steps + 1):
        index = rng.integers(len(scenes), size=batch_size)
        captions = [
            "" if rng.random() < CAPTION_DROPOUT else shapes.random_caption(scenes[i], rng)
            for i in index
        ]
        x0 = latents[torch.from_numpy(index)]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, 1000, (batch_size,), generator=generator)
        noisy = scheduler.add_noise(x0, noise, t)
        hidden = text_encoder(ids(captions))[0]
        pred = unet(noisy, t, hidden).sample
        per = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        loss = (per * weights[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in _named(unet, text_encoder).items():
                ema[k].lerp_(v.detach(), 1 - decay)
        log.append({"step": step, "loss": per.mean().item(), "weighted": loss.item()})
        elapsed = time.monotonic() - started
        if step % 100 == 0 or step == steps:
            recent = np.mean([r["loss"] for r in log[-100:]])
            print(f"unet {step}/{total} loss {recent:.4f} lr {sched.get_last_lr()[0]:.2e} "
                  f"{elapsed:.0f}s ({step / elapsed:.2f} it/s)", flush=True)  # fmt: skip
        if step == 30 and minutes is not None:  # fit the schedule to the wall-clock budget
            rate = step / elapsed
            total = max(step + 1, min(steps, int(rate * minutes * 60)))
            print(f"budget {minutes} min at {rate:.2f} it/s: {total} steps", flush=True)
        if step >= total:
            break
    unet_ema = {k[5:]: v for k, v in ema.items() if k.startswith("unet.")}
    te_ema = {k[3:]: v for k, v in ema.items() if k.startswith("te.")}
    return unet_ema, te_ema, step


def _named(unet: Any, text_encoder: Any) -> dict[str, torch.Tensor]:
    out = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    out.update({f"te.{k}": v for k, v in text_encoder.state_dict().items()})
    return out


def save_pipeline(folder: Path, unet: Any, vae: Any, text_encoder: Any, tokenizer: Any) -> None:
    """A diffusers folder (fp32: 7 MB, loads with no dtype argument) + vocab.json, merges.txt."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        unet=unet.float(), vae=vae.float(), text_encoder=text_encoder.float(),
        tokenizer=tokenizer, scheduler=training_scheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    vocab, merges = vocab_and_merges()
    (tmp / "tokenizer" / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
    (tmp / "tokenizer" / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
    )
    # empty packages, so setuptools' package-data ("*.safetensors", "*.json", "*.txt") ships them
    for sub in (tmp, *(p for p in tmp.iterdir() if p.is_dir())):
        (sub / "__init__.py").write_text('"""Toy model weights (data only)."""\n')
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


# ---------------------------------------------------------------- docs


SAMPLE_PROMPTS = [
    "a green triangle on a white background",
    "a big red circle in the center on a blue background",
    "a small yellow star at the top left on a black background",
    "a blue square at the bottom right on a yellow background",
    "a white ring on a gray background",
    "an orange cross on a green background",
    "a black diamond at the top on a white and red background",
    "a big purple circle on the left on a yellow background",
]


DOC_FONT_PX = 14
"""The docs' images are read full size on a page, not in a phone's chat preview."""


def sample_grid(folder: Path, out: Path, seeds: tuple[int, ...] = (1, 2, 3, 4)) -> None:
    """Rows: SAMPLE_PROMPTS; columns: seeds (20 DPM++ steps, guidance 5), upscaled 2×."""
    from diffusers import StableDiffusionPipeline

    from trainer.generate import render

    pipe = StableDiffusionPipeline.from_pretrained(
        folder, safety_checker=None, requires_safety_checker=False, torch_dtype=torch.float32
    )
    pipe.set_progress_bar_config(disable=True)
    cell, label = 128, 330
    grid = Image.new("RGB", (label + cell * len(seeds), cell * len(SAMPLE_PROMPTS)), "white")
    draw = ImageDraw.Draw(grid)
    face = font(DOC_FONT_PX)
    for row, prompt in enumerate(SAMPLE_PROMPTS):
        draw_lines(draw, (6, row * cell + 6), wrap(prompt, face, label - 12, 5), face, "black")
        for col, seed in enumerate(seeds):
            image = render(pipe, prompt, seed=seed, steps=20, guidance=5.0, width=64, height=64)
            grid.paste(image.resize((cell, cell), Image.Resampling.NEAREST),
                       (label + col * cell, row * cell))  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)


def loss_curve_png(
    vae_log: list[dict[str, float]], unet_log: list[dict[str, float]], out: Path
) -> None:
    """Two panels drawn with PIL: VAE reconstruction MSE and denoiser ε-MSE (moving average)."""
    width, height, pad = 900, 340, 70
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    face = font(DOC_FONT_PX)
    panels = [
        ("VAE reconstruction MSE", [r["mse"] for r in vae_log], 0),
        ("UNet + text encoder: noise MSE (avg of 100)", [r["loss"] for r in unet_log], 1),
    ]
    for title, values, i in panels:
        if not values:
            continue
        window = max(1, min(100, len(values) // 20 or 1))
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        x0, x1 = pad + i * width // 2, (i + 1) * width // 2 - 20
        y0, y1 = 40, height - pad
        lo, hi = float(np.min(smooth)), float(np.max(smooth))
        log_scale = hi / max(lo, 1e-9) > 20
        f = (lambda v: math.log10(max(v, 1e-9))) if log_scale else (lambda v: v)
        flo, fhi = f(lo), f(hi)
        draw.rectangle([x0, y0, x1, y1], outline="black")
        heading = wrap(title + (" (log)" if log_scale else ""), face, x1 - x0, 1)[0]
        draw.text((x0, 10), heading, fill="black", font=face)
        for text, y, anchor in ((f"{hi:.3g}", y0, "rt"), (f"{lo:.3g}", y1, "rb")):
            draw.text((x0 - 4, y), text, fill="black", font=face, anchor=anchor)
        draw.text((x1, y1 + 5), f"step {len(values)}", fill="black", font=face, anchor="rt")
        points = [
            (x0 + (x1 - x0) * j / max(1, len(smooth) - 1),
             y1 - (y1 - y0) * (f(float(v)) - flo) / max(fhi - flo, 1e-9))
            for j, v in enumerate(smooth)
        ]  # fmt: skip
        draw.line(points, fill=(200, 40, 40), width=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("trainer/builtin_models/toy"))
    parser.add_argument("--work", type=Path, default=Path("data/toy-train"))
    parser.add_argument("--docs", type=Path, default=None, help="write grid + curve + log here")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vae-steps", type=int, default=300)
    parser.add_argument("--images", type=int, default=12000)
    parser.add_argument("--unet-steps", type=int, default=20000)
    parser.add_argument("--unet-minutes", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    started = time.monotonic()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer()
    torch.manual_seed(args.seed)
    vae, unet, text_encoder = make_vae(), make_unet(), make_text_encoder(tokenizer)

    # VAE
    vae_file, vae_log_file = work / "vae.pt", work / "vae_log.json"
    if vae_file.is_file():
        vae.load_state_dict(torch.load(vae_file))
        vae_log = json.loads(vae_log_file.read_text())
    else:
        vae_log: list[dict[str, float]] = []
        train_vae(vae, args.vae_steps, args.seed, vae_log)
        torch.save(vae.state_dict(), vae_file)
        vae_log_file.write_text(json.dumps(vae_log))
    vae.eval().requires_grad_(False)
    vae_seconds = time.monotonic() - started

    # latents of a fixed scene set
    latent_file = work / f"latents-{args.images}.pt"
    data = shapes.make_dataset(args.images, args.seed + 3)
    scenes = [scene for scene, _, _ in data]
    if latent_file.is_file():
        latents = torch.load(latent_file)
    else:
        latents = encode_latents(vae, [image for _, image, _ in data])
        torch.save(latents, latent_file)
    std = float(latents.std())
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    latents = latents * vae.config.scaling_factor
    print(f"latents {tuple(latents.shape)} std {std:.4f} → scaling {vae.config.scaling_factor}")
    with torch.no_grad():
        recon = vae.decode(latents[:64] / vae.config.scaling_factor).sample
        recon_mse = float(torch.nn.functional.mse_loss(recon, to_tensor(
            [image for _, image, _ in data[:64]])))  # fmt: skip
    print(f"VAE held-in reconstruction MSE {recon_mse:.4f}", flush=True)

    # UNet + text encoder
    unet_started = time.monotonic()
    unet_log: list[dict[str, float]] = []
    unet_ema, te_ema, done = train_denoiser(
        unet, text_encoder, tokenizer, latents, scenes, steps=args.unet_steps,
        minutes=args.unet_minutes, seed=args.seed, lr=args.lr, batch_size=args.batch_size,
        log=unet_log,
    )  # fmt: skip
    unet_seconds = time.monotonic() - unet_started
    unet.load_state_dict(unet_ema)
    text_encoder.load_state_dict(te_ema)
    unet.eval()
    text_encoder.eval()
    save_pipeline(args.out, unet, vae, text_encoder, tokenizer)
    summary = {
        "seed": args.seed,
        "threads": args.threads,
        "vae_steps": len(vae_log),
        "vae_batch": 16,
        "vae_final_mse": float(np.mean([r["mse"] for r in vae_log[-25:]])),
        "vae_recon_mse": recon_mse,
        "vae_seconds": round(vae_seconds),
        "images": args.images,
        "latent_std": std,
        "unet_steps": done,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "unet_seconds": round(unet_seconds),
        "unet_first_loss": float(np.mean([r["loss"] for r in unet_log[:100]])),
        "unet_final_loss": float(np.mean([r["loss"] for r in unet_log[-500:]])),
        "total_seconds": round(time.monotonic() - started),
    }
    print(json.dumps(summary, indent=1), flush=True)
    if args.docs is not None:
        args.docs.mkdir(parents=True, exist_ok=True)
        (args.docs / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        loss_curve_png(vae_log, unet_log, args.docs / "training_curve.png")
        sample_grid(args.out, args.docs / "samples.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
