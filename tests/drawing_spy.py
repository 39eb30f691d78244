"""Every text drawn on an image, measured: a spy on Pillow's `ImageDraw.text` for tests that
check labels fit their image, do not overlap and stay legible at Discord's preview width.

Pillow's `multiline_text` draws through `text`, so one patch sees every label, whichever helper
drew it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from PIL import ImageDraw, ImageFont

DISCORD_PREVIEW_WIDTH = 400
"""Discord shows an attached image at most about 400 px wide on a phone (550 on desktop)."""
MIN_READABLE_PX = 11


@dataclass(frozen=True)
class DrawnText:
    text: str
    box: tuple[int, int, int, int]  # left, top, right, bottom: the ink's bounding box
    image_size: tuple[int, int]
    font_px: float
    image: int = 0  # which image (the identity of Pillow's core image)

    def inside(self) -> bool:
        left, top, right, bottom = self.box
        width, height = self.image_size
        return left >= 0 and top >= 0 and right <= width and bottom <= height

    def overlaps(self, other: DrawnText) -> bool:
        a, b = self.box, other.box
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

    def preview_px(self, preview_width: int = DISCORD_PREVIEW_WIDTH) -> float:
        """The font's size once the image is scaled down to fit the preview (never up)."""
        return self.font_px * min(1.0, preview_width / self.image_size[0])


def _font_px(font: object) -> float:
    if isinstance(font, ImageFont.FreeTypeFont):
        return float(font.size)
    if isinstance(font, ImageFont.TransposedFont):
        return _font_px(font.font)
    return 11.0  # Pillow's bitmap font: about 11 px from ascender to descender


@pytest.fixture
def drawn_text(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[DrawnText]]:
    """The list every `ImageDraw.text` call appends to (non-blank text only)."""
    drawn: list[DrawnText] = []
    original = ImageDraw.ImageDraw.text

    def spy(self, xy, text, fill=None, font=None, anchor=None, spacing=4, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(text).strip():
            chosen = font if font is not None else self.getfont()
            box = self.textbbox(xy, text, font=chosen, anchor=anchor, spacing=spacing)
            size = self.im.size
            box = (int(box[0]), int(box[1]), int(box[2]), int(box[3]))
            drawn.append(
                DrawnText(str(text), box, (size[0], size[1]), _font_px(chosen), id(self.im))
            )
        return original(self, xy, text, fill, font, anchor, spacing, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", spy)
    yield drawn


def problems(drawn: list[DrawnText], phone: bool = True) -> list[str]:
    """Labels outside their image, overlapping another, or (`phone`) under 11 px on a phone."""
    out = []
    for index, item in enumerate(drawn):
        if not item.inside():
            out.append(f"{item.text!r} at {item.box} leaves the {item.image_size} image")
        if phone and item.preview_px() < MIN_READABLE_PX:
            out.append(f"{item.text!r} is {item.preview_px():.1f} px at the preview width")
        for other in drawn[index + 1 :]:
            if other.image == item.image and item.overlaps(other):
                out.append(f"{item.text!r} {item.box} overlaps {other.text!r} {other.box}")
    return out


def words_drawn(drawn: list[DrawnText]) -> str:
    """All drawn text as one space-separated string (wrapped lines joined)."""
    return " ".join(" ".join(item.text.split()) for item in drawn)
