"""Validation grids a team votes on, a comparison of all checkpoints, and the loss curve.

At each checkpoint: fixed prompts × fixed seeds rendered with the current weights through the
already-loaded pipeline, with the scheduler, steps and guidance a member would use (so the grid
matches what they will get), beside a "base" column: the same prompt and first seed *without*
what was trained. For LoRA/DoRA that is the adapter layers switched off; for an embedding (and
pivotal's trigger) it is also the prompt with the learned token replaced by its initializer word
(what the base model draws for the class the token started from). The base column is rendered
once per job and reused.

Drawing uses Pillow only (its built-in scalable font, `storage.drawing`), so the worker needs
no plotting library; the grid's layout is `trainer.grids`.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from storage.drawing import Font, draw_lines, font, legible_size, line_height, text_width, wrap
from trainer.adapters import adapter_disabled
from trainer.config import TrainConfig
from trainer.grids import BG as _BG
from trainer.grids import FG as _FG
from trainer.grids import draw_blocks, draw_grid

MAX_GRID_BYTES = 10 * 1024 * 1024
BASE_HEADER = "base model"


@dataclass
class ValidationPlan:
    """What every grid of a job renders: prompts as shown, as rendered, and for the base."""

    labels: list[str]
    prompts: list[str]
    base_prompts: list[str]
    seeds: list[int]
    width: int
    height: int


MAX_CONCEPT_PROMPTS = 8


def default_prompts(config: TrainConfig, concepts: list[str] | None = None) -> list[str]:
    """Prompts from the trigger when the job names none: the concept alone and in two contexts.

    A dataset of several concepts (LoRA/DoRA) gets each trigger alone, then all together."""
    if concepts and len(concepts) > 1 and config.method != "embedding":
        shown = concepts[: MAX_CONCEPT_PROMPTS - 1]
        together = ", ".join(shown[:-1]) + f" and {shown[-1]}"
        return [*shown, f"a photo of {together}"]
    trigger = config.token if config.learns_token else config.trigger
    if not trigger:
        return ["a photo", "a painting of a landscape"]
    return [trigger, f"a photo of {trigger}, outdoors", f"a painting of {trigger}"]


def make_plan(
    config: TrainConfig, base_word: str | None = None, concepts: list[str] | None = None
) -> ValidationPlan:
    """Prompts as shown and rendered (`{trigger}` filled in); `base_word` replaces the token.

    `concepts` are the dataset's triggers (several: multi-concept prompts when the job names
    none; `{trigger}` without a job trigger becomes all of them). Pipelines expand a
    multi-vector token themselves (textual-inversion mixin), so a prompt is sent as written.
    """
    word = config.token if config.learns_token else config.trigger
    if not word and concepts:
        word = " and ".join(concepts)
    labels = [
        p.replace("{trigger}", word)
        for p in (config.validation.prompts or default_prompts(config, concepts))
    ]
    prompts = list(labels)
    if config.learns_token and base_word and word:
        base_prompts = [label.replace(word, base_word) for label in labels]
    else:
        base_prompts = prompts
    side = config.resolution
    return ValidationPlan(labels, prompts, base_prompts, list(config.validation.seeds), side, side)


# ---------------------------------------------------------------- sampling


def prepare_pipeline(model: Any, config: TrainConfig) -> None:
    """Give the pipeline the member-facing sampler once per job (the pipeline is reused)."""
    model.arch.prepare_pipeline(model, config)


@torch.no_grad()
def render(
    model: Any, config: TrainConfig, prompt: str, seed: int, width: int, height: int
) -> Image.Image:
    """One image as a member's generation would draw it (fixed seed, CPU generator), with the
    architecture's own sampler."""
    settings = config.validation
    with _autocast_like(model):
        return model.arch.sample(
            model.pipeline,
            prompt=prompt,
            seed=seed,
            steps=settings.steps,
            guidance=settings.guidance,
            scheduler=settings.scheduler,
            negative_prompt=settings.negative_prompt,
            width=width,
            height=height,
        )


def _autocast_like(model: Any) -> contextlib.AbstractContextManager[Any]:
    """Autocast to the denoiser's dtype when it is bf16/fp16 (mixed-precision training keeps fp32
    trainable weights, and an embedding job fp32 text encoders, beside it); off in fp32."""
    dtype = next(model.denoiser.parameters()).dtype
    return torch.autocast(model.device.type, dtype=dtype, enabled=dtype != torch.float32)


def render_base(model: Any, config: TrainConfig, plan: ValidationPlan) -> list[Image.Image]:
    """The base column: one image per prompt, first seed, without the trained adapter and with
    a learned token's initializer word in its place (`plan.base_prompts`)."""
    seed = plan.seeds[0]
    with adapter_disabled(model):
        return [render(model, config, p, seed, plan.width, plan.height) for p in plan.base_prompts]


def validation_grid(
    model: Any,
    config: TrainConfig,
    plan: ValidationPlan,
    base: list[Image.Image],
    step: int,
    path: Path,
    extra_rows: list[tuple[str, list[Image.Image]]] | None = None,
    footer: list[str] | None = None,
) -> Path:
    """Render the current weights for every prompt × seed and save the labelled grid PNG.

    `extra_rows` (label, [base, seed images…]) are drawn below (the leakage rows), `footer`
    lines under the grid."""
    rows = [
        [
            base[row],
            *(render(model, config, prompt, seed, plan.width, plan.height) for seed in plan.seeds),
        ]
        for row, prompt in enumerate(plan.prompts)
    ]
    labels = list(plan.labels)
    for label, images in extra_rows or []:
        rows.append(images)
        labels.append(label)
    headers = [BASE_HEADER, *(f"seed {seed}" for seed in plan.seeds)]
    shown = [[enlarge(image) for image in row] for row in rows]
    grid = with_footer(draw_grid(shown, labels, headers, title=f"step {step}"), footer)
    save_strip([row[0] for row in rows], strip_path(path.parent / "base.png"), labels)
    save_strip([row[1] for row in rows], strip_path(path), labels)
    return save_png(grid, path)


MIN_TILE = 128
"""Small renders (the 64-px toy model) are shown at least this wide, pixel for pixel."""


def enlarge(image: Image.Image, min_side: int = MIN_TILE) -> Image.Image:
    """Scale a small tile up by a whole factor (nearest neighbour: no invented detail)."""
    factor = -(-min_side // image.width)
    if factor <= 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def strip_path(grid: Path) -> Path:
    """Where a grid's first-seed column is kept for the comparison grid."""
    return grid.with_name(f"{grid.stem}.strip.png")


def save_strip(images: list[Image.Image], path: Path, labels: list[str]) -> None:
    """One column of full-size tiles (one per prompt), with the prompts in the PNG's text."""
    from PIL import PngImagePlugin

    width, height = images[0].width, images[0].height
    strip = Image.new("RGB", (width, height * len(images)), _BG)
    for row, image in enumerate(images):
        strip.paste(image.convert("RGB"), (0, row * height))
    info = PngImagePlugin.PngInfo()
    info.add_text("labels", json.dumps(labels))
    path.parent.mkdir(parents=True, exist_ok=True)
    strip.save(path, format="PNG", pnginfo=info)


def _read_strip(path: Path) -> tuple[list[Image.Image], list[str]]:
    strip = Image.open(path)
    labels = json.loads(strip.text["labels"])  # type: ignore[attr-defined]
    height = strip.height // len(labels)
    tiles = [strip.crop((0, r * height, strip.width, (r + 1) * height)) for r in range(len(labels))]
    return tiles, labels


# ---------------------------------------------------------------- drawing


def with_footer(image: Image.Image, lines: list[str] | None) -> Image.Image:
    """The image with plain text lines added below it (numbers a team reads with the grid),
    measured and wrapped to the image's width at the grid's legible size."""
    if not lines:
        return image
    face = font(legible_size(image.width))
    pad = max(4, face.size // 3)
    wrapped = [part for line in lines for part in wrap(line, face, image.width - 2 * pad)]
    out = Image.new(
        "RGB", (image.width, image.height + line_height(face) * len(wrapped) + pad * 2), _BG
    )
    out.paste(image, (0, 0))
    draw_lines(ImageDraw.Draw(out), (pad, image.height + pad), wrapped, face, _FG)
    return out


def save_png(image: Image.Image, path: Path, max_bytes: int = MAX_GRID_BYTES) -> Path:
    """Save as PNG, scaling down until the file is under `max_bytes` (Discord's upload limit)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        image.save(path, format="PNG", optimize=False)
        if path.stat().st_size < max_bytes or image.width < 64:
            return path
        image = image.resize(
            (int(image.width * 0.75), int(image.height * 0.75)), Image.Resampling.LANCZOS
        )


VOTE_NUMBERS = 10
"""Number reactions on the comparison grid (Discord's keycaps 1️⃣…🔟)."""


def comparison_grid(
    paths: list[Path],
    steps: list[int],
    out: Path | None = None,
    min_tile: int = MIN_TILE,
    footer: list[str] | None = None,
    suggested: int | None = None,
) -> Path:
    """One table to vote on: a row per prompt (first seed), the base model, then one column per
    checkpoint numbered 1…N as the vote reactions are: the newest ten when there are more (the
    reactions 1️⃣…🔟 count those; older ones are voted with 👍 on their own grid). Tiles are
    shown at least `min_tile` px. The `suggested` step's header says so; `footer` lines go
    under the table."""
    if not paths:
        raise ValueError("comparison_grid needs at least one grid")
    newest = sorted(zip(steps, paths, strict=True))[-VOTE_NUMBERS:]  # 1️⃣…🔟 count these
    steps, paths = [s for s, _ in newest], [p for _, p in newest]
    base, labels = _read_strip(strip_path(Path(paths[0]).parent / "base.png"))
    columns = [base] + [_read_strip(strip_path(Path(p)))[0] for p in paths]
    rows = [[enlarge(column[row], min_tile) for column in columns] for row in range(len(labels))]
    headers = [BASE_HEADER, *(f"{number}: step {step}" for number, step in enumerate(steps, 1))]
    if suggested in steps:
        headers[steps.index(suggested) + 1] += " *"
    grid = with_footer(
        draw_blocks(rows, labels, headers, title="Vote for the best checkpoint"), footer
    )
    return save_png(grid, out or Path(paths[0]).parent / "comparison.png")


_TRAIN_COLOUR, _HELDOUT_COLOUR = (30, 80, 200), (220, 90, 20)


def loss_curve(
    losses: list[float],
    path: Path,
    size: tuple[int, int] = (640, 360),
    heldout: list[tuple[int, float]] | None = None,
) -> Path:
    """The per-step loss (grey) and its moving average (blue), with min/max and step axis
    labels; the held-out loss at each checkpoint step (orange points and line), with a legend.

    Both share one axis: the held-out loss is unweighted (no min-SNR), so compare their trends
    rather than their levels.
    """
    width, height = size
    face = font(legible_size(width))
    pad, line = max(4, face.size // 3), line_height(face)
    held = [(s, v) for s, v in (heldout or []) if v is not None and math.isfinite(v)]
    finite = [value for value in losses if math.isfinite(value)] + [v for _, v in held]
    low, high = (min(finite), max(finite)) if finite else (0.0, 0.0)
    ticks = [f"{high:.3g}", f"{low:.3g}"]
    left = max(text_width(tick, face) for tick in ticks) + 2 * pad
    right, top, bottom = pad * 2, line + 2 * pad, line + pad
    image = Image.new("RGB", size, _BG)
    draw = ImageDraw.Draw(image)
    _legend(draw, (left, pad), face, with_heldout=bool(held))
    draw.rectangle((left, top, width - right, height - bottom), outline=(160, 160, 160))
    if len(finite) >= 1:
        span = (high - low) or 1.0
        n = max(1, len(losses) - 1)

        def point(i: int, value: float) -> tuple[float, float]:
            x = left + (width - left - right) * i / n
            y = top + (height - top - bottom) * (1 - (value - low) / span)
            return x, y

        raw = [point(i, v) for i, v in enumerate(losses) if math.isfinite(v)]
        if len(raw) > 1:
            draw.line(raw, fill=(190, 190, 190), width=1)
        smooth, average = [], finite[0]
        for i, value in enumerate(losses):
            if math.isfinite(value):
                average = 0.9 * average + 0.1 * value
            smooth.append(point(i, average))
        if len(smooth) > 1:
            draw.line(smooth, fill=_TRAIN_COLOUR, width=2)
        marks = [point(step - 1, value) for step, value in held]
        if len(marks) > 1:
            draw.line(marks, fill=_HELDOUT_COLOUR, width=2)
        for x, y in marks:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=_HELDOUT_COLOUR)
        draw.text((pad, top), ticks[0], fill=_FG, font=face)
        draw.text((pad, height - bottom - line), ticks[1], fill=_FG, font=face)
        draw.text((left, height - bottom + pad // 2), "1", fill=_FG, font=face)
        last = f"{len(losses)}"
        at = width - right - text_width(last, face)
        draw.text((at, height - bottom + pad // 2), last, fill=_FG, font=face)
    return save_png(image, path)


def _legend(draw: ImageDraw.ImageDraw, xy: tuple[int, int], face: Font, with_heldout: bool) -> None:
    """A colour swatch and name per line: the training loss, and the held-out loss if any."""
    x, y = xy
    middle = y + line_height(face) // 2
    entries = [("training loss", _TRAIN_COLOUR)]
    if with_heldout:
        entries.append(("held-out loss (checkpoints)", _HELDOUT_COLOUR))
    swatch = face.size if hasattr(face, "size") else 16
    for name, colour in entries:
        draw.line((x, middle, x + swatch, middle), fill=colour, width=2)
        if colour == _HELDOUT_COLOUR:
            half = swatch // 2
            draw.ellipse((x + half - 3, middle - 3, x + half + 3, middle + 3), fill=colour)
        draw.text((x + swatch + 4, y), name, fill=_FG, font=face)
        x += swatch + 4 + text_width(name, face) + 2 * swatch
