"""Every label on a grid members vote on is whole, inside its image, apart from the others and
readable on a phone (Discord previews an attachment about 400 px wide there)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from tests.drawing_spy import drawn_text, problems, words_drawn
from trainer.iterate import comparison_image, comparison_label
from trainer.validation import comparison_grid, draw_grid, loss_curve, save_strip, strip_path

__all__ = ["drawn_text"]

PROMPTS = [
    "ohwx",
    "a photo of ohwx woman wearing a red wool coat, standing in the rain at night, neon city "
    "lights reflecting in the puddles, 35mm film, shallow depth of field",
    "masterpiece,best_quality,ultra-detailed_8k_wallpaper,ohwx,looking_at_viewer,cinematic",
]
BASE, TRAINED = (0, 0, 200), (200, 0, 0)


def _tiles(side: int, columns: int, rows: int) -> list[list[Image.Image]]:
    return [
        [Image.new("RGB", (side, side), BASE if c == 0 else TRAINED) for c in range(columns)]
        for _ in range(rows)
    ]


def test_checkpoint_grid_labels_fit_and_read_on_a_phone(drawn_text) -> None:
    headers = ["base", "seed 1234567", "seed 2345678", "seed 3456789"]
    grid = draw_grid(_tiles(512, 4, 3), PROMPTS, headers, title="step 1500 of 3000")
    assert drawn_text and all(item.image_size == grid.size for item in drawn_text)
    assert problems(drawn_text) == []
    text = words_drawn(drawn_text)
    for label in [*PROMPTS, *headers, "step 1500 of 3000"]:
        for word in label.replace(",", " ").split():
            assert word in text.replace(",", " "), word


def test_small_tiles_grid_is_still_legible(drawn_text) -> None:
    grid = draw_grid(_tiles(128, 3, 2), PROMPTS[:2], ["base", "seed 1", "seed 2"], "step 20")
    assert grid.width >= 3 * 128
    assert problems(drawn_text) == []


def test_base_column_is_set_apart_from_the_trained_columns() -> None:
    grid = draw_grid(_tiles(128, 3, 1), ["ohwx"], ["base", "seed 1", "seed 2"], "step 20")
    pixels = grid.convert("RGB").load()
    # the first row of tiles: find the base tile and the trained tiles along one line
    y = next(y for y in range(grid.height) if any(pixels[x, y] == BASE for x in range(grid.width)))
    y += 64
    line = [pixels[x, y] for x in range(grid.width)]
    base_end = max(x for x, p in enumerate(line) if p == BASE)
    first_trained = min(x for x, p in enumerate(line) if p == TRAINED)
    assert first_trained - base_end > 3, "no separator between the base and trained columns"
    trained = [x for x, p in enumerate(line) if p == TRAINED]
    assert len(trained) == trained[-1] - trained[0] + 1, "trained columns are one block"


def test_comparison_grid_of_many_checkpoints_fits_its_labels(tmp_path: Path, drawn_text) -> None:
    save_strip([Image.new("RGB", (64, 64), BASE)] * 3, tmp_path / "base.strip.png", PROMPTS)
    grids, steps = [], [500 * n for n in range(1, 13)]
    for step in steps:
        grid = tmp_path / f"step-{step:08d}.png"
        Image.new("RGB", (8, 8)).save(grid)
        save_strip([Image.new("RGB", (64, 64), TRAINED)] * 3, strip_path(grid), PROMPTS)
        grids.append(grid)
    drawn_text.clear()
    out = comparison_grid(grids, steps, tmp_path / "comparison.png")
    assert problems(drawn_text) == []
    text = words_drawn(drawn_text)
    assert "6000" in text and "10" in text  # the newest ten, numbered as the reactions are
    assert "1000" not in text
    with Image.open(out) as image:  # blocks of base + 5 checkpoints, stacked: each as wide
        assert {item.image_size[0] for item in drawn_text} == {image.width}
        assert image.width <= 6 * 128 + 16


def test_loss_curve_labels_fit_and_read_on_a_phone(tmp_path: Path, drawn_text) -> None:
    losses = [0.2 - 0.0001 * i for i in range(1500)]
    loss_curve(losses, tmp_path / "loss.png", heldout=[(500, 0.15), (1000, 0.14), (1500, 0.16)])
    assert problems(drawn_text) == []
    assert "held-out" in words_drawn(drawn_text)


class _Job:
    def __init__(self, job_id: int, name: str) -> None:
        self.id, self.name = job_id, name


def test_ab_comparison_labels_fit_whole(drawn_text) -> None:
    diff = {"rank": [4, 8], "dataset": ["v1", "v2"], "learning_rate": [0.0001, 0.0002]}
    labels = [
        comparison_label(_Job(2, "shapes-v2"), diff, 0),  # type: ignore[arg-type]
        comparison_label(_Job(17, "hero of the northern kingdoms, autumn outfit"), diff, 1),  # type: ignore[arg-type]
    ]
    columns = [[Image.new("RGB", (64, 64), colour)] * 4 for colour in (BASE, TRAINED)]
    grid = comparison_image(columns, labels)
    assert problems(drawn_text) == []
    text = words_drawn(drawn_text)
    for label in labels:
        for word in label.split():
            assert word in text, word
    assert grid.width >= 2 * 64


def test_toy_model_docs_curve_labels_fit(tmp_path: Path, drawn_text) -> None:
    """The docs' training curve (read full size on a page, so no phone check)."""
    from trainer.toy.train_base import loss_curve_png

    vae = [{"mse": 0.5 / (1 + i)} for i in range(400)]
    unet = [{"loss": 0.3 - 0.0001 * i} for i in range(2000)]
    loss_curve_png(vae, unet, tmp_path / "curve.png")
    assert problems(drawn_text, phone=False) == []
    assert "step 2000" in words_drawn(drawn_text)
