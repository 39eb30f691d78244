"""The labelled grid members vote on: a title, column headers, and per row its prompt above the
row's tiles. Laid out to be read on a phone (Discord previews an image about 400 px wide): the
prompt spans the whole width instead of a narrow left column, every label is measured and
wrapped, and the font grows with the grid so it is still about 11 px once scaled down.

The first column is the base model (no training); a dark bar sets it apart from the trained
columns and its header is shaded. Pillow only: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageDraw

from storage.drawing import Font, block_height, draw_lines, font, legible_size, wrap

MAX_TILE = 512
MAX_PROMPT_LINES = 4
MAX_TRAINED_COLUMNS = 5
"""Trained columns per block of a wide grid: more would make a phone show each tile under
~60 px and its header under 11 px, so wider grids are stacked in blocks, each with the base."""
BG, FG = (255, 255, 255), (20, 20, 20)
BAND = (240, 241, 243)  # behind each prompt
BASE_HEADER = (255, 236, 200)  # behind the base column's header
SEPARATOR = (60, 60, 60)  # the bar between the base column and the trained ones


@dataclass(frozen=True)
class GridLayout:
    """Where everything goes; `tile_box` tells a test (or a later row) where a tile is."""

    tile_w: int
    tile_h: int
    columns: int
    separator: int
    width: int
    face: Font
    pad: int
    title: list[str]
    headers: list[list[str]]
    prompts: list[list[str]]
    title_h: int
    header_h: int

    def column_x(self, column: int) -> int:
        return column * self.tile_w + (self.separator if column >= 1 else 0)

    def band_h(self, row: int) -> int:
        return block_height(len(self.prompts[row]), self.face) + self.pad

    def row_top(self, row: int) -> int:
        """The top of row `row`'s prompt band."""
        top = self.title_h + self.header_h
        return top + sum(self.band_h(r) + self.tile_h for r in range(row))

    def tile_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        x, y = self.column_x(column), self.row_top(row) + self.band_h(row)
        return x, y, x + self.tile_w, y + self.tile_h

    @property
    def height(self) -> int:
        return self.row_top(len(self.prompts))


def grid_layout(
    tile_size: tuple[int, int],
    row_labels: list[str],
    headers: list[str],
    title: str,
    columns: int | None = None,
) -> GridLayout:
    """Measure and wrap every label for tiles of `tile_size` (capped at `MAX_TILE`); the width
    (and so the font) is that of `columns` columns when a narrower block shares a wider image."""
    tile_w, tile_h = min(MAX_TILE, tile_size[0]), min(MAX_TILE, tile_size[1])
    separator = max(4, tile_w // 24)
    width = tile_w * max(len(headers), columns or 0) + separator
    face = font(legible_size(width))
    pad = max(4, face.size // 3) if hasattr(face, "size") else 4
    text_w = width - 2 * pad
    wrapped_headers = [wrap(header, face, tile_w - 2 * pad) for header in headers]
    title_lines = wrap(title, face, text_w, max_lines=2)
    return GridLayout(
        tile_w=tile_w,
        tile_h=tile_h,
        columns=len(headers),
        separator=separator,
        width=width,
        face=face,
        pad=pad,
        title=title_lines,
        headers=wrapped_headers,
        prompts=[wrap(label, face, text_w, max_lines=MAX_PROMPT_LINES) for label in row_labels],
        title_h=block_height(len(title_lines), face) + 2 * pad,
        header_h=block_height(max(len(h) for h in wrapped_headers), face) + pad,
    )


def draw_grid(
    rows: list[list[Image.Image]],
    row_labels: list[str],
    headers: list[str],
    title: str,
    columns: int | None = None,
) -> Image.Image:
    """A title, column headers (the first: the base model), and one row per prompt: the prompt
    in a band across the grid, then its tiles. `columns`: lay out as wide as that many."""
    size = (
        max(im.width for row in rows for im in row),
        max(im.height for row in rows for im in row),
    )
    layout = grid_layout(size, row_labels, headers, title, columns)
    grid = Image.new("RGB", (layout.width, layout.height), BG)
    draw = ImageDraw.Draw(grid)
    face, pad = layout.face, layout.pad
    draw_lines(draw, (pad, pad), layout.title, face, FG)
    header_top = layout.title_h
    draw.rectangle(
        (0, header_top, layout.tile_w - 1, header_top + layout.header_h - 1), fill=BASE_HEADER
    )
    for column, lines in enumerate(layout.headers):
        draw_lines(draw, (layout.column_x(column) + pad, header_top), lines, face, FG)
    for row, images in enumerate(rows):
        top = layout.row_top(row)
        draw.rectangle((0, top, layout.width - 1, top + layout.band_h(row) - 1), fill=BAND)
        draw_lines(draw, (pad, top + pad // 2), layout.prompts[row], face, FG)
        for column, image in enumerate(images):
            x, y, _, _ = layout.tile_box(row, column)
            grid.paste(image.convert("RGB").resize((layout.tile_w, layout.tile_h)), (x, y))
    bar = (layout.tile_w, layout.tile_w + layout.separator - 1)
    draw.rectangle((bar[0], header_top, bar[1], header_top + layout.header_h - 1), fill=SEPARATOR)
    for row in range(len(rows)):
        _, y0, _, y1 = layout.tile_box(row, 0)
        draw.rectangle((bar[0], y0, bar[1], y1 - 1), fill=SEPARATOR)
    return grid


def draw_blocks(
    rows: list[list[Image.Image]], row_labels: list[str], headers: list[str], title: str
) -> Image.Image:
    """`draw_grid`, stacked in blocks of the base column and at most `MAX_TRAINED_COLUMNS`
    trained columns (so a grid of many checkpoints stays readable on a phone)."""
    trained = len(headers) - 1
    if trained <= MAX_TRAINED_COLUMNS:
        return draw_grid(rows, row_labels, headers, title)
    blocks = []
    for start in range(1, trained + 1, MAX_TRAINED_COLUMNS):
        picked = [0, *range(start, min(start + MAX_TRAINED_COLUMNS, trained + 1))]
        part = title if start == 1 else f"{title} (continued)"
        blocks.append(
            draw_grid(
                [[row[c] for c in picked] for row in rows],
                row_labels,
                [headers[c] for c in picked],
                part,
                columns=MAX_TRAINED_COLUMNS + 1,
            )
        )
    stacked = Image.new("RGB", (blocks[0].width, sum(b.height for b in blocks)), BG)
    top = 0
    for block in blocks:
        stacked.paste(block, (0, top))
        top += block.height
    return stacked
