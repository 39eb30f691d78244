"""Small generated datasets for tests: coloured shapes with side-car captions, zipped."""

from __future__ import annotations

import io
import random
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
}


def shape_image(seed: int, size: int = 96) -> tuple[Image.Image, str]:
    """A random coloured circle or square on a plain background, and its caption."""
    rng = random.Random(seed)
    color = rng.choice(list(COLORS))
    shape = rng.choice(["circle", "square"])
    image = Image.new("RGB", (size, size), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    x, y, r = rng.randint(20, size - 20), rng.randint(20, size - 20), rng.randint(10, 18)
    box = (x - r, y - r, x + r, y + r)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLORS[color])
    return image, f"a {color} {shape} on a white background"


def dataset_zip(count: int = 6, size: int = 96, seed: int = 0) -> bytes:
    """A zip of `count` PNGs with side-car captions."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(count):
            image, caption = shape_image(seed * 1000 + index, size)
            png = io.BytesIO()
            image.save(png, format="PNG")
            archive.writestr(f"img_{index:02d}.png", png.getvalue())
            archive.writestr(f"img_{index:02d}.txt", caption)
    return buffer.getvalue()


def write_dataset_zip(path: Path, count: int = 6, size: int = 96, seed: int = 0) -> Path:
    path.write_bytes(dataset_zip(count, size, seed))
    return path
