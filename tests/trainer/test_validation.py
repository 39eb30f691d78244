"""Validation grids: layout and labels, the base column really lacks the adapter, size limits."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from tests.trainer.train_helpers import _one_thread, model_cache, tiny_config
from trainer import adapters, loop
from trainer.grids import grid_layout
from trainer.validation import (
    adapter_disabled,
    comparison_grid,
    default_prompts,
    draw_grid,
    loss_curve,
    make_plan,
    prepare_pipeline,
    render,
    render_base,
    save_png,
    save_strip,
    strip_path,
    validation_grid,
)

__all__ = ["_one_thread", "model_cache"]


def _pixels(image: Image.Image) -> bytes:
    return image.convert("RGB").tobytes()


def _ink(image: Image.Image, box: tuple[int, int, int, int]) -> int:
    """Non-white pixels in a box: labels drawn there."""
    data = image.crop(box).convert("RGB").tobytes()
    return sum(1 for i in range(0, len(data), 3) if data[i : i + 3] != b"\xff\xff\xff")


def test_draw_grid_layout_and_labels():
    tiles = [[Image.new("RGB", (64, 64), (0, 0, 200)) for _ in range(3)] for _ in range(2)]
    labels, headers = ["ohwx", "a painting of ohwx"], ["base", "seed 1", "seed 2"]
    grid = draw_grid(tiles, labels, headers, "step 20")
    layout = grid_layout((64, 64), labels, headers, "step 20")
    assert grid.size == (layout.width, layout.height)
    assert layout.width == 3 * 64 + layout.separator
    assert _ink(grid, (0, 0, 80, layout.title_h)) > 0  # title
    top = layout.row_top(0)
    assert _ink(grid, (0, top, layout.width, top + layout.band_h(0))) > 0  # first prompt
    x0, y0, x1, y1 = layout.tile_box(1, 2)
    assert grid.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == (0, 0, 200)


def test_default_prompts_come_from_the_trigger():
    assert all("ohwx" in p for p in default_prompts(tiny_config()))
    plan = make_plan(tiny_config(validation={"prompts": ["{trigger} at sea"], "seeds": [3, 4]}))
    assert plan.labels == ["ohwx at sea"] and plan.seeds == [3, 4]
    embedding = make_plan(
        tiny_config(method="embedding", validation={"prompts": ["{trigger}"]}), "person"
    )
    assert embedding.prompts == ["ohwx"] and embedding.base_prompts == ["person"]


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_base_column_is_the_model_without_the_adapter(method, tmp_path, model_cache):
    config = tiny_config(method=method, resolution=32, validation={"steps": 2, "seeds": [1, 2]})
    model = loop.load_model(config, model_cache, torch.device("cpu"), torch.float32, None)
    prepare_pipeline(model, config)
    plan = make_plan(config)
    plain = render(model, config, plan.prompts[0], 1, 32, 32)
    torch.manual_seed(0)
    for param in adapters.inject_adapter(model, config):
        param.data.add_(torch.randn_like(param) * 0.5)
    base = render_base(model, config, plan)
    assert _pixels(base[0]) == _pixels(plain)  # adapter fully off
    trained = render(model, config, plan.prompts[0], 1, 32, 32)
    assert _pixels(trained) != _pixels(plain)  # and back on afterwards
    with adapter_disabled(model):
        pass
    assert _pixels(render(model, config, plan.prompts[0], 1, 32, 32)) == _pixels(trained)

    path = validation_grid(model, config, plan, base, 20, tmp_path / "grid.png")
    with Image.open(path) as grid:
        tile = 128  # 32-px renders are shown 4× (nearest), at least 128 px
        headers = ["base model", "seed 1", "seed 2"]
        layout = grid_layout((tile, tile), plan.labels, headers, "step 20")
        assert grid.size == (layout.width, layout.height)
    assert path.stat().st_size < 10 * 1024 * 1024


def test_save_png_shrinks_until_under_the_limit(tmp_path):
    noise = Image.effect_noise((512, 512), 100).convert("RGB")
    path = save_png(noise, tmp_path / "big.png", max_bytes=60_000)
    assert path.stat().st_size < 60_000
    with Image.open(path) as saved:
        assert saved.width < 512


def test_comparison_grid_puts_base_and_numbered_checkpoints_side_by_side(tmp_path):
    labels = ["tkxw", "tkxw on a blue background"]
    colors = {"base": (0, 0, 255), 10: (255, 0, 0), 20: (0, 255, 0)}
    save_strip(
        [Image.new("RGB", (64, 64), colors["base"])] * 2, tmp_path / "base.strip.png", labels
    )
    grids = []
    for step in (10, 20):
        grid = tmp_path / f"step-{step:08d}.png"
        save_png(Image.new("RGB", (300, 200)), grid)
        save_strip([Image.new("RGB", (64, 64), colors[step])] * 2, strip_path(grid), labels)
        grids.append(grid)
    out = comparison_grid(grids, [10, 20], tmp_path / "comparison.png")
    with Image.open(out) as image:
        tile = 128  # 64-px tiles are shown at least 128 px wide
        headers = ["base model", "1: step 10", "2: step 20"]
        layout = grid_layout((tile, tile), labels, headers, "Vote for the best checkpoint")
        assert image.size == (layout.width, layout.height)
        for column, key in enumerate(["base", 10, 20]):
            x0, y0, x1, y1 = layout.tile_box(0, column)
            assert image.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == colors[key]
    curve = loss_curve([1.0, 0.8, float("nan"), 0.5, 0.4], tmp_path / "loss.png")
    with Image.open(curve) as image:
        assert image.size == (640, 360)
        assert _ink(image, (60, 30, 620, 330)) > 100  # the curve is drawn
    with pytest.raises(ValueError):
        comparison_grid([], [])


def test_comparison_grid_numbers_the_newest_ten_as_the_reactions_do(tmp_path):
    """With twelve checkpoints the grid shows the ten that 1️⃣…🔟 count, 1 = the oldest of those."""
    labels = ["tkxw"]
    save_strip([Image.new("RGB", (64, 64), (0, 0, 0))], tmp_path / "base.strip.png", labels)
    steps = list(range(50, 650, 50))  # 12 checkpoints
    grids = []
    for index, step in enumerate(steps):
        grid = tmp_path / f"step-{step:08d}.png"
        save_png(Image.new("RGB", (300, 200)), grid)
        save_strip([Image.new("RGB", (64, 64), (index * 20, 0, 0))], strip_path(grid), labels)
        grids.append(grid)
    out = comparison_grid(grids, steps, tmp_path / "comparison.png")
    with Image.open(out) as image:
        colours = {colour for _, colour in image.convert("RGB").getcolors(1 << 24)}
    assert (1 * 20, 0, 0) not in colours  # step 100, the second checkpoint, is not shown
    assert {(2 * 20, 0, 0), (11 * 20, 0, 0)} <= colours  # steps 150 … 600 are
