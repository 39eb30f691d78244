"""Procedural, seeded scenes of simple shapes with captions that say exactly what is drawn.

A scene is one shape (circle, square, triangle, star, ring, cross, diamond) of a named colour and
size at one of nine positions over a plain or two-tone (top / bottom) background, drawn at 64 px:
"a small red circle at the top left on a blue background". The same `Scene` always draws the
same pixels; `random_scene(rng)` draws from the base model's distribution, which never contains
the learning benchmark's concept (`CONCEPT`: a purple star inside a yellow ring) nor any purple
star at all, so a LoRA that draws it must have learned it.

Only numpy and PIL: importing this module is cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
SUPERSAMPLE = 4  # shapes are drawn 4× larger and downsampled: smooth edges, exact colours inside

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (35, 70, 220),
    "yellow": (245, 215, 30),
    "purple": (140, 40, 180),
    "orange": (245, 130, 20),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}
FOREGROUND_COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
BACKGROUND_COLORS = ("white", "black", "gray", "blue", "green", "red", "yellow")
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "diamond")
SIZES: dict[str, float] = {"small": 9.0, "big": 17.0}  # radius in px (64-px canvas)
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.25, 0.25),
    "top": (0.5, 0.25),
    "top right": (0.75, 0.25),
    "left": (0.25, 0.5),
    "center": (0.5, 0.5),
    "right": (0.75, 0.5),
    "bottom left": (0.25, 0.75),
    "bottom": (0.5, 0.75),
    "bottom right": (0.75, 0.75),
}
POSITION_PHRASES = {
    "top left": "at the top left",
    "top": "at the top",
    "top right": "at the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "at the bottom left",
    "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}
EXCLUDED_FROM_BASE = {("purple", "star")}
"""(colour, shape) pairs the base model never sees: part of the benchmark concept."""

TRIGGER = "tkxw"
CONCEPT = "a purple star inside a yellow ring"
CONCEPT_COLORS = ("purple", "yellow")

VOCABULARY: tuple[str, ...] = (
    *COLORS, *SHAPES, *SIZES, "a", "an", "at", "the", "on", "in", "and", "inside",
    "top", "bottom", "left", "right", "center", "background",
)  # fmt: skip
"""Every word a caption uses: the toy tokenizer makes each one a single token."""


@dataclass(frozen=True)
class Scene:
    """Everything drawn: the caption is a function of these fields only."""

    shape: str
    color: str
    size: str = "big"
    position: str = "center"
    background: str = "white"
    background2: str | None = None  # two-tone: top half `background`, bottom half this
    concept: bool = False  # the benchmark concept (purple star in a yellow ring) replaces the shape
    jitter: tuple[float, float] = (0.0, 0.0)  # px offset of the centre
    angle: float = 0.0  # small rotation in degrees

    @property
    def background_colors(self) -> tuple[str, ...]:
        return (self.background,) if self.background2 is None else (
            self.background, self.background2
        )  # fmt: skip


def caption(
    scene: Scene,
    *,
    with_size: bool = True,
    with_position: bool = True,
    with_background: bool = True,
    trigger: str = TRIGGER,
) -> str:
    """ "a small red circle at the top left on a blue background" (parts may be left out)."""
    if scene.concept:
        parts = [f"a {scene.size} {trigger}" if with_size else trigger]
    else:
        words = [scene.size] if with_size else []
        words += [scene.color, scene.shape]
        parts = [("an " if words[0][0] in "aeiou" else "a ") + " ".join(words)]
    if with_position:
        parts.append(POSITION_PHRASES[scene.position])
    if with_background:
        if scene.background2 is None:
            parts.append(f"on a {scene.background} background")
        else:
            parts.append(f"on a {scene.background} and {scene.background2} background")
    return " ".join(parts)


def random_caption(scene: Scene, rng: np.random.Generator, keep: float = 0.75) -> str:
    """A caption with size, position and background each named with probability `keep`."""
    flags = rng.random(3) < keep
    return caption(
        scene, with_size=bool(flags[0]), with_position=bool(flags[1]),
        with_background=bool(flags[2]),
    )  # fmt: skip


def random_scene(
    rng: np.random.Generator, *, concept: bool = False, two_tone: float = 0.25
) -> Scene:
    """A scene from the base distribution (or, with `concept`, one of the benchmark concept)."""
    while True:
        shape = SHAPES[rng.integers(len(SHAPES))]
        color = FOREGROUND_COLORS[rng.integers(len(FOREGROUND_COLORS))]
        if not concept and (color, shape) in EXCLUDED_FROM_BASE:
            continue
        forbidden = set(CONCEPT_COLORS) if concept else {color}
        backgrounds = [c for c in BACKGROUND_COLORS if c not in forbidden]
        background = backgrounds[rng.integers(len(backgrounds))]
        background2 = None
        if rng.random() < two_tone:
            others = [c for c in backgrounds if c != background]
            background2 = others[rng.integers(len(others))]
        return Scene(
            shape="star" if concept else shape,
            color="purple" if concept else color,
            size=tuple(SIZES)[rng.integers(len(SIZES))],
            position=tuple(POSITIONS)[rng.integers(len(POSITIONS))],
            background=background,
            background2=background2,
            concept=concept,
            jitter=(float(rng.uniform(-2, 2)), float(rng.uniform(-2, 2))),
            angle=float(rng.uniform(-8, 8)),
        )


# ---------------------------------------------------------------- drawing


def _polygon(cx: float, cy: float, radii: list[float], angle0: float) -> list[tuple[float, float]]:
    count = len(radii)
    return [
        (
            cx + r * math.cos(math.radians(angle0) + 2 * math.pi * i / count),
            cy + r * math.sin(math.radians(angle0) + 2 * math.pi * i / count),
        )
        for i, r in enumerate(radii)
    ]


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    cx: float,
    cy: float,
    r: float,
    angle: float,
    fill: tuple[int, int, int],
) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        width = max(r * 0.38, 1.0)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=round(width))
    elif shape == "square":
        s = r * 0.85
        corners = [(-s, -s), (s, -s), (s, s), (-s, s)]
        draw.polygon(_rotate(corners, cx, cy, angle), fill=fill)
    elif shape == "diamond":
        draw.polygon(_polygon(cx, cy, [r] * 4, angle - 90), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy + r * 0.15, [r * 1.1] * 3, angle - 90), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, [r * 1.1, r * 0.45] * 5, angle - 90), fill=fill)
    elif shape == "cross":
        a, b = r * 0.95, r * 0.32
        arms = [(-a, -b), (a, -b), (a, b), (-a, b)]
        draw.polygon(_rotate(arms, cx, cy, angle), fill=fill)
        draw.polygon(_rotate([(y, x) for x, y in arms], cx, cy, angle), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _rotate(
    points: list[tuple[float, float]], cx: float, cy: float, angle: float
) -> list[tuple[float, float]]:
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def render(scene: Scene, size: int = SIZE) -> Image.Image:
    """Draw the scene as an RGB image of `size`² pixels."""
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), COLORS[scene.background])
    draw = ImageDraw.Draw(image)
    if scene.background2 is not None:
        draw.rectangle([0, big // 2, big, big], fill=COLORS[scene.background2])
    fx, fy = POSITIONS[scene.position]
    k = big / SIZE
    cx, cy = fx * big + scene.jitter[0] * k, fy * big + scene.jitter[1] * k
    r = SIZES[scene.size] * k
    if scene.concept:
        _draw_shape(draw, "ring", cx, cy, r * 1.05, 0.0, COLORS["yellow"])
        _draw_shape(draw, "star", cx, cy, r * 0.6, scene.angle, COLORS["purple"])
    else:
        _draw_shape(draw, scene.shape, cx, cy, r, scene.angle, COLORS[scene.color])
    return image.resize((size, size), Image.Resampling.BOX)


def make_dataset(
    count: int, seed: int, *, concept: bool = False
) -> list[tuple[Scene, Image.Image, str]]:
    """`count` (scene, image, full caption) triples, the same for the same seed."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        scene = random_scene(rng, concept=concept)
        out.append((scene, render(scene), caption(scene)))
    return out


def with_fields(scene: Scene, **changes: object) -> Scene:
    """A copy of `scene` with some fields changed (validates names)."""
    return replace(scene, **changes)  # type: ignore[arg-type]
