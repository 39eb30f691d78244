"""Is a generated toy image what its prompt asked for? Cheap pixel statistics, no learned judge.

- Colour: every pixel is given the nearest palette colour (`shapes.COLORS`); the background is the
  most common colour on the border of each half (top / bottom: two-tone backgrounds); foreground
  pixels are the others. The image matches a colour when that colour is the most common one in the
  foreground and the foreground is large enough to be a shape.
- Shape: the mask of the foreground colour, cropped to its bounding box and resized to 16×16, is
  given the majority label of its nearest neighbours among masks of generator scenes (k-NN,
  rebuilt deterministically in about a second from `shapes`).
- The benchmark concept (`shapes.CONCEPT`, a purple star inside a yellow ring) scores ¼ for each
  of: purple foreground present, yellow foreground present, the purple mask is a star, the yellow
  mask is a ring.

`recognisability(pipe, ...)` renders prompts × seeds and reports the rates.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from trainer.toy import shapes

PALETTE_NAMES = tuple(shapes.COLORS)
PALETTE = np.array([shapes.COLORS[name] for name in PALETTE_NAMES], dtype=np.float32)
MIN_AREA = 40
"""Foreground pixels (of 4096) below which nothing counts as drawn (a small star is ~120)."""
MIN_SHARE = 0.15
FEATURE = 16


@dataclass
class Analysis:
    labels: np.ndarray  # H×W palette indices
    foreground: np.ndarray  # H×W bool
    background: tuple[str, ...]
    counts: dict[str, int]  # foreground pixels per colour name

    @property
    def area(self) -> int:
        return int(self.foreground.sum())

    @property
    def dominant(self) -> str | None:
        if self.area < MIN_AREA or not self.counts:
            return None
        return max(self.counts, key=self.counts.__getitem__)

    def share(self, color: str) -> float:
        return self.counts.get(color, 0) / max(self.area, 1)

    def mask(self, color: str) -> np.ndarray:
        return self.foreground & (self.labels == PALETTE_NAMES.index(color))


def analyse(image: Image.Image) -> Analysis:
    """Palette labels, background colours (per half) and the foreground mask."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    dist = ((pixels[:, :, None, :] - PALETTE[None, None]) ** 2).sum(-1)
    labels = dist.argmin(-1)
    height = labels.shape[0]
    half = height // 2
    foreground = np.ones_like(labels, dtype=bool)
    background = []
    for rows in (slice(0, half), slice(half, height)):
        part = labels[rows]
        border = np.concatenate([part[:, 0], part[:, -1], part[0] if rows.start == 0 else
                                 part[-1]])  # fmt: skip
        bg = int(np.bincount(border, minlength=len(PALETTE_NAMES)).argmax())
        background.append(PALETTE_NAMES[bg])
        foreground[rows] &= part != bg
    # a two-tone background's other half colour is not foreground either
    foreground &= ~np.isin(labels, [PALETTE_NAMES.index(c) for c in background])
    counts: dict[str, int] = {}
    for index in np.unique(labels[foreground]):
        counts[PALETTE_NAMES[index]] = int((labels[foreground] == index).sum())
    unique_bg = tuple(dict.fromkeys(background))
    return Analysis(labels, foreground, unique_bg, counts)


def mask_feature(mask: np.ndarray) -> np.ndarray | None:
    """Bounding-box crop of a mask, resized to FEATURE², flattened and centred to unit norm."""
    ys, xs = np.nonzero(mask)
    if len(ys) < 8:
        return None
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.uint8) * 255
    side = max(crop.shape)  # pad to a square so aspect ratio is kept
    square = np.zeros((side, side), dtype=np.uint8)
    oy, ox = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square[oy : oy + crop.shape[0], ox : ox + crop.shape[1]] = crop
    small = Image.fromarray(square).resize((FEATURE, FEATURE), Image.Resampling.BILINEAR)
    vector = np.asarray(small, dtype=np.float32).ravel() / 255.0
    vector -= vector.mean()
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else None


class ShapeClassifier:
    """k-NN over mask features of generator scenes (the same pipeline as on generated images)."""

    def __init__(self, features: np.ndarray, labels: np.ndarray, k: int = 5) -> None:
        self.features, self.labels, self.k = features, labels, k

    @classmethod
    def fit(cls, per_class: int = 150, seed: int = 0) -> ShapeClassifier:
        rng = np.random.default_rng(seed)
        features, labels = [], []
        for label, shape in enumerate(shapes.SHAPES):
            made = 0
            while made < per_class:
                scene = shapes.with_fields(shapes.random_scene(rng), shape=shape)
                image = shapes.render(scene)
                if rng.random() < 0.5:  # generated images are soft: learn from blurred ones too
                    from PIL import ImageFilter

                    image = image.filter(ImageFilter.GaussianBlur(0.8))
                info = analyse(image)
                color = info.dominant
                vector = mask_feature(info.mask(color)) if color else None
                if vector is None:
                    continue
                features.append(vector)
                labels.append(label)
                made += 1
        return cls(np.stack(features), np.array(labels))

    def predict(self, mask: np.ndarray) -> str | None:
        vector = mask_feature(mask)
        if vector is None:
            return None
        similarity = self.features @ vector
        nearest = np.argsort(-similarity)[: self.k]
        votes = np.bincount(self.labels[nearest], minlength=len(shapes.SHAPES))
        return shapes.SHAPES[int(votes.argmax())]


@lru_cache(maxsize=1)
def classifier() -> ShapeClassifier:
    return ShapeClassifier.fit()


def judge(image: Image.Image, color: str | None, shape: str | None) -> dict[str, Any]:
    """What the image shows vs. what was asked: dominant colour, shape, and both matches."""
    info = analyse(image)
    dominant = info.dominant
    seen_shape = classifier().predict(info.mask(dominant)) if dominant else None
    return {
        "dominant": dominant,
        "shape": seen_shape,
        "color_ok": color is None or dominant == color,
        "shape_ok": shape is None or seen_shape == shape,
        "area": info.area,
    }


def concept_parts(image: Image.Image) -> dict[str, bool]:
    """Which parts of the benchmark concept an image has: purple, yellow, a purple star, a
    yellow ring (all False when the foreground is too small to judge)."""
    info = analyse(image)
    if info.area < MIN_AREA:
        return dict.fromkeys(CONCEPT_PARTS, False)
    purple = info.counts.get("purple", 0) >= 10 and info.share("purple") >= MIN_SHARE
    yellow = info.counts.get("yellow", 0) >= 10 and info.share("yellow") >= MIN_SHARE
    star = purple and classifier().predict(info.mask("purple")) == "star"
    ring = yellow and classifier().predict(info.mask("yellow")) == "ring"
    return {"purple": purple, "yellow": yellow, "star": star, "ring": ring}


CONCEPT_PARTS = ("purple", "yellow", "star", "ring")


def concept_score(image: Image.Image) -> float:
    """0–1: how much the image looks like the benchmark concept (purple star in a yellow ring):
    a quarter for each of `concept_parts`."""
    return sum(concept_parts(image).values()) / 4.0


# ---------------------------------------------------------------- rendering + rates


def eval_scenes(count: int, seed: int = 7) -> list[shapes.Scene]:
    """Prompt scenes for recognisability (plain backgrounds, every shape and colour)."""
    rng = np.random.default_rng(seed)
    return [shapes.random_scene(rng, two_tone=0.0) for _ in range(count)]


def render_prompt(pipe: Any, prompt: str, seed: int, steps: int = 20, guidance: float = 5.0):
    from trainer.generate import render

    return render(pipe, prompt, seed=seed, steps=steps, guidance=guidance, width=64, height=64)


def recognisability(
    pipe: Any,
    scenes: list[shapes.Scene],
    seeds: tuple[int, ...] = (1, 2),
    *,
    steps: int = 20,
    guidance: float = 5.0,
    full_captions: bool = True,
) -> dict[str, Any]:
    """Colour / shape / both match rates over scenes × seeds (prompt = the scene's caption)."""
    rows = []
    for scene in scenes:
        prompt = shapes.caption(scene) if full_captions else shapes.caption(
            scene, with_size=False, with_position=False
        )  # fmt: skip
        for seed in seeds:
            image = render_prompt(pipe, prompt, seed, steps, guidance)
            rows.append(judge(image, scene.color, scene.shape))
    n = len(rows)
    return {
        "images": n,
        "color": sum(r["color_ok"] for r in rows) / n,
        "shape": sum(r["shape_ok"] for r in rows) / n,
        "both": sum(r["color_ok"] and r["shape_ok"] for r in rows) / n,
    }


def main() -> int:
    """`python -m trainer.toy.scoring [folder]`: rates of a model folder, as JSON."""
    import json
    import sys

    import torch
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(1)
    folder = sys.argv[1] if len(sys.argv) > 1 else "trainer/builtin_models/toy"
    pipe = StableDiffusionPipeline.from_pretrained(
        folder, safety_checker=None, requires_safety_checker=False, torch_dtype=torch.float32
    )
    pipe.set_progress_bar_config(disable=True)
    scenes = eval_scenes(int(sys.argv[2]) if len(sys.argv) > 2 else 56)
    result = {
        "full_captions": recognisability(pipe, scenes),
        "color_and_shape_only": recognisability(pipe, scenes, full_captions=False),
        "chance": {"color": 1 / len(shapes.FOREGROUND_COLORS), "shape": 1 / len(shapes.SHAPES)},
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
