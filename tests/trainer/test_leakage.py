"""Leakage: no-trigger rows and the change number under each grid, and the suggested checkpoint."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tests.trainer.train_helpers import _one_thread, make_dataset, model_cache, tiny_config
from trainer import loop
from trainer.callbacks import CheckpointInfo
from trainer.leakage import (
    DEFAULT_LEAK_PROMPTS,
    LABEL_PREFIX,
    comparison_footer,
    leak_prompts,
    pixel_change,
    suggest,
)
from trainer.validation import strip_path

__all__ = ["_one_thread", "model_cache"]


def test_leak_prompts_named_derived_or_default():
    prompts = ["ohwx", "a photo of ohwx, outdoors"]
    named = tiny_config(validation={"leak_prompts": ["a red square", " "]})
    assert leak_prompts(named, prompts) == ["a red square"]
    classed = tiny_config(preservation={"enabled": True, "class_word": "cat"})
    assert leak_prompts(classed, prompts) == ["cat", "a photo of cat, outdoors"]
    assert leak_prompts(tiny_config(), prompts) == list(DEFAULT_LEAK_PROMPTS)
    assert leak_prompts(tiny_config(validation={"leak_prompts": []}), prompts) == []


def test_pixel_change_is_the_mean_absolute_difference_on_0_to_255():
    black, white = Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4), (255, 255, 255))
    half = Image.new("RGB", (4, 4), (255, 0, 0))
    assert pixel_change([black], [black]) == 0.0
    assert pixel_change([white], [black]) == 255.0
    assert pixel_change([half, black], [black, black]) == pytest.approx(85.0 / 2)


def test_suggest_balances_heldout_loss_and_leakage():
    # held-out falls then flattens, leakage rises: the middle balances both
    rows = [(100, 0.30, 1.0), (200, 0.20, 2.0), (300, 0.19, 9.0)]
    assert suggest(rows) == 200
    assert suggest([(100, 0.3, 1.0), (200, 0.3, 1.0)]) == 100  # a tie: the earlier step
    assert suggest([(100, None, 1.0), (200, None, 2.0)]) is None  # no held-out images
    assert suggest([(100, 0.3, 1.0)]) is None
    lines = comparison_footer([100, 200], [0.3, None], [1.0, 2.5], 200)
    assert lines[0] == "1: step 100 · held-out loss 0.3000 · outside the trigger changed by 1.0/255"
    assert lines[1].endswith("* suggested") and lines[-1].startswith("* suggested")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "embedding"])
def test_grids_show_no_trigger_rows_and_the_change(method, tmp_path, model_cache):
    dataset = make_dataset(tmp_path / "data", count=10, size=32)
    config = tiny_config(
        method=method, steps=6, checkpoint_every=3, resolution=32, learning_rate=5e-2,
        validation={"steps": 2, "seeds": [1, 2], "prompts": ["{trigger}"], "scheduler": "euler",
                    "leak_prompts": ["a photo of a dog"]},
    )  # fmt: skip
    result = loop.train(config, dataset, tmp_path / "out", cache_dir=model_cache, device="cpu")
    changes = [c.leakage for c in result.checkpoints]
    if method == "embedding":  # its token is not in the prompt: exactly the base image
        assert changes == [0.0, 0.0]
    else:
        assert all(change is not None and change > 0.5 for change in changes), changes
    for info in result.checkpoints:
        with Image.open(strip_path(info.grid_path)) as strip:
            assert json.loads(strip.text["labels"]) == ["ohwx", f"{LABEL_PREFIX}a photo of a dog"]
        with Image.open(info.grid_path) as grid:  # two rows of 128-px tiles, then the footer
            assert grid.height > 24 + 18 + 2 * 128
        assert CheckpointInfo.from_json(info.to_json()).leakage == info.leakage
    expected = suggest([(c.step, c.heldout_loss, c.leakage) for c in result.checkpoints])
    assert result.suggested_step == expected
    assert result.to_json()["suggested_step"] == expected
    if method == "lora":
        assert expected is not None


@pytest.mark.slow
def test_resolution_follows_the_base_model_unless_set(tmp_path, model_cache):
    dataset = make_dataset(tmp_path / "data", count=2, size=32)
    config = tiny_config(
        resolution=None, steps=1, checkpoint_every=1, heldout_fraction=0.0,
        validation={"steps": 1, "seeds": [1], "prompts": ["{trigger}"], "scheduler": "euler",
                    "leak_prompts": []},
    )  # fmt: skip
    result = loop.train(config, dataset, tmp_path / "out", cache_dir=model_cache, device="cpu")
    from safetensors import safe_open

    with safe_open(str(result.final.file), "pt") as handle:
        assert handle.metadata()["ss_resolution"] == "(64, 64)"  # the tiny model's native side
