"""bench/learn.py's summary over training seeds: the numbers the toy-model goals are read from."""

from __future__ import annotations

import statistics

import pytest


def _run(seed: int, concept: float, per_image: list[float]) -> dict:
    from bench.learn import FLIPPED

    mean = sum(per_image) / len(per_image)
    final = {
        "step": 2000, "concept": concept, "leak_both": 0.9, "leak_pixel_change": mean,
        "leak_pixel_change_per_image": per_image,
        "leak_pixel_change_median": statistics.median(per_image),
        "leak_flipped": sum(change > FLIPPED for change in per_image),
    }  # fmt: skip
    return {
        "preset": "character", "method": "lora", "preservation": True, "seed": seed,
        "steps_per_second": 10.0, "checkpoints": [final],
    }  # fmt: skip


def test_summary_separates_flipped_images_from_the_nudged_rest() -> None:
    """One image in four flipped (a shape drawn elsewhere) in one seed of two: the mean change
    says 6.0, the median and the flipped share say what happened."""
    from bench.learn import summarise

    runs = [_run(1, 0.4, [2.0, 3.0, 4.0, 30.0]), _run(2, 0.2, [1.0, 2.0, 3.0, 3.0])]
    (row,) = summarise(runs, {"concept": 0.1, "leak_both": 0.9})
    assert row["seeds"] == [1, 2]
    assert row["concept_gain_mean"] == pytest.approx(0.2)
    assert row["leak_pixel_change_mean"] == pytest.approx((9.75 + 2.25) / 2, abs=0.01)
    assert row["leak_pixel_change_median_mean"] == pytest.approx((3.5 + 2.5) / 2)
    assert row["leak_flipped_share"] == pytest.approx(0.125)


def test_runs_of_differently_labelled_settings_are_summarised_apart() -> None:
    """Two settings gathered in one file (the same preset and method, another lr) stay two rows."""
    from bench.learn import summarise

    runs = [_run(1, 0.4, [2.0]), _run(2, 0.2, [1.0]), _run(1, 0.5, [3.0])]
    runs[2]["label"] = "lr 5e-5"
    rows = summarise(runs, {"concept": 0.1, "leak_both": 0.9})
    assert [row.get("label") for row in rows] == [None, "lr 5e-5"]
    assert [row["seeds"] for row in rows] == [[1, 2], [1]]
    assert rows[1]["concept_gain_mean"] == pytest.approx(0.4)


def test_the_first_six_ordinary_prompts_are_reported_apart() -> None:
    """24 prompts × 2 seeds are scored; the six of passes one to six (the first 12 images) keep
    their own figures, in every run and in the summary, so older files stay comparable."""
    from bench.learn import earlier_leak, summarise

    per_image = [8.0] * 12 + [2.0] * 36
    earlier = earlier_leak([1] * 9 + [0] * 3 + [1] * 36, per_image, seeds=2)
    assert earlier == {"prompts": 6, "both": 0.75, "pixel_change": 8.0}
    runs = [_run(1, 0.4, per_image), _run(2, 0.2, per_image)]
    for run, both in zip(runs, (0.75, 0.85), strict=True):
        run["checkpoints"][-1]["leak_earlier"] = {**earlier, "both": both}
    (row,) = summarise(runs, {"concept": 0.1, "leak_both": 0.9, "leak_both_earlier": 0.875})
    assert row["leak_pixel_change_mean"] == pytest.approx(3.5)
    assert row["leak_pixel_change_earlier_mean"] == pytest.approx(8.0)
    assert row["leak_both_earlier_mean"] == pytest.approx(0.8)
    assert row["leak_both_earlier_delta"] == pytest.approx(-0.075)


def test_the_scored_prompts_begin_with_the_earlier_six_and_stay_out_of_keep_prompts() -> None:
    from bench.learn import EARLIER_LEAK_PROMPTS, LEAK_PROMPTS, leak_scenes, preservation_prompts
    from trainer.toy import shapes

    scored = [shapes.caption(scene) for scene in leak_scenes()]
    assert len(scored) == LEAK_PROMPTS
    assert scored[:EARLIER_LEAK_PROMPTS] == [
        shapes.caption(scene) for scene in leak_scenes(EARLIER_LEAK_PROMPTS)
    ]
    assert not set(preservation_prompts(64)) & set(scored)


def test_a_null_override_takes_effect_where_the_preset_sets_a_value() -> None:
    from bench.learn import preset_config
    from trainer.presets import apply_preset

    assert apply_preset("character", "lora").min_snr_gamma is not None
    config = preset_config("character", "lora", {"min_snr_gamma": None, "rank": 8})
    assert config.min_snr_gamma is None
    assert config.rank == 8
    assert config.steps == apply_preset("character", "lora").steps
