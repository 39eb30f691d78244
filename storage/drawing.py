"""Text on images, measured: one scalable font, wrapping by pixel width, and the font size that
stays readable when Discord shows an image scaled down to a phone's width.

Pillow only (no torch, no discord): the dataset contact sheet (`storage.datasets`), the worker's
validation and comparison grids (`trainer.validation`, `trainer.iterate`) and anything the bot
draws share it. It lives in `storage` because that package is the one all others may import.
"""

from __future__ import annotations

import math
from functools import lru_cache

from PIL import ImageDraw, ImageFont

PREVIEW_WIDTH = 400
"""How wide Discord shows an attached image on a phone (about 400 px; 550 on desktop). An image
wider than this is scaled down to it, so its text shrinks by the same factor."""
MIN_PREVIEW_PX = 11
"""The smallest font size (px) that stays readable once scaled to `PREVIEW_WIDTH`."""
MIN_FONT_PX = 12

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


TRUETYPE = "DejaVuSans.ttf"
"""Preferred: covers accents, dashes and most scripts members write prompts in (the worker's
image installs `fonts-dejavu-core`; Pillow finds it in the system font folders)."""


@lru_cache(maxsize=64)
def font(size: int) -> Font:
    """DejaVu Sans at `size` px, else Pillow's built-in scalable font (Aileron, bundled with
    Pillow ≥ 10.1: always there, but Latin letters only, no accents)."""
    try:
        return ImageFont.truetype(TRUETYPE, size)
    except OSError:
        return ImageFont.load_default(size=size)


def legible_size(
    image_width: int, preview_width: int = PREVIEW_WIDTH, min_px: int = MIN_PREVIEW_PX
) -> int:
    """The font size for an image `image_width` wide whose text must be at least `min_px` once
    Discord scales the image down to `preview_width` (never up)."""
    scale = min(1.0, preview_width / max(1, image_width))
    return max(MIN_FONT_PX, math.ceil(min_px / scale))


def text_width(text: str, face: Font) -> int:
    """The drawn width of one line, in pixels."""
    left, _, right, _ = face.getbbox(text)
    return math.ceil(right - min(0, left))


def line_height(face: Font) -> int:
    """The distance from one line's top to the next's: ascender to descender plus a gap."""
    ascent, descent = face.getmetrics() if isinstance(face, ImageFont.FreeTypeFont) else (11, 2)
    return int(ascent + descent + max(2, (ascent + descent) // 6))


def wrap(text: str, face: Font, width: int, max_lines: int | None = None) -> list[str]:
    """`text` in lines no wider than `width`: broken between words, and inside a word (or a
    comma-joined tag list) only when it alone is too wide. Past `max_lines` the last line ends
    with "…"."""
    lines: list[str] = []
    for word in text.split():
        for piece in _pieces(word, face, width):
            if lines and text_width(f"{lines[-1]} {piece}", face) <= width:
                lines[-1] = f"{lines[-1]} {piece}"
            else:
                lines.append(piece)
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _ellipsize(lines[-1], face, width)
    return lines or [""]


def _pieces(word: str, face: Font, width: int) -> list[str]:
    """A word too wide for a line, cut after commas where possible, else between characters."""
    if text_width(word, face) <= width:
        return [word]
    pieces: list[str] = []
    current = ""
    for char in word:
        if current and text_width(current + char, face) > width:
            cut = current.rfind(",") + 1
            if 0 < cut < len(current):
                pieces.append(current[:cut])
                current = current[cut:]
            else:
                pieces.append(current)
                current = ""
        current += char
    return [*pieces, current] if current else pieces


def _ellipsize(line: str, face: Font, width: int) -> str:
    while line and text_width(line + "…", face) > width:
        line = line[:-1]
    return line.rstrip() + "…"


def draw_lines(
    draw: ImageDraw.ImageDraw,
    xy: tuple[int, int],
    lines: list[str],
    face: Font,
    fill: str | tuple[int, int, int],
) -> int:
    """Draw lines top-down from `xy` (one `text` call each); returns the height used."""
    x, y = xy
    step = line_height(face)
    for number, line in enumerate(lines):
        draw.text((x, y + number * step), line, fill=fill, font=face)
    return step * len(lines)


def block_height(lines: int, face: Font) -> int:
    """The height `draw_lines` uses for `lines` lines."""
    return line_height(face) * lines
