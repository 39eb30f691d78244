"""A LoRA trained on the toy model learns a concept the base model has never seen.

The concept `tkxw` (a purple star inside a yellow ring) is absent from the toy model's data.
20 generated images train a LoRA with the `character` preset (steps overridden for CPU); images
for trigger prompts in contexts the training images do not have must score clearly higher on
`concept_score` than the base model's images for the same prompts and seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.trainer.train_helpers import _one_thread
from trainer.toy import scoring

__all__ = ["_one_thread"]

STEPS = 300
LEARNING_RATE = 1e-3
"""The preset's 1e-4 is tuned for 2000 steps on SD 1.5; in 300 CPU steps it barely moves the toy
model (bench: concept 0.18 vs base 0.11), so the test overrides it as a member could."""
MARGIN = 0.10
"""Required gain in mean concept score (0-1) over the base model's images.

Measured with `python bench/learn.py --methods lora --lr 1e-3 --seeds 1 2 3 --steps 300` (same
20 images, the same 6 prompts x 3 seeds as here): base 0.111; LoRA 0.347 / 0.319 / 0.250 for
training seeds 1 / 2 / 3, i.e. gains 0.236 / 0.208 / 0.139 (mean 0.19, sd 0.05). The margin is
below the smallest measured gain (about 2 sd below the mean), not fitted to seed 1's result.
"""


@pytest.mark.slow
def test_lora_learns_the_toy_concept(tmp_path: Path):
    from bench.learn import (
        BASE,
        load_base,
        make_concept_dataset,
        new_context_prompts,
    )
    from trainer.generate import load_for_generation
    from trainer.loop import train
    from trainer.presets import apply_preset
    from trainer.toy import shapes

    scenes = make_concept_dataset(tmp_path / "data")
    prompts = new_context_prompts(scenes, count=6)
    seeds = [1, 2, 3]
    # measured without preservation (the preset's default now); test_preservation covers it
    overrides = {"learning_rate": LEARNING_RATE, "preservation": {"enabled": False}}
    config = apply_preset(
        "character", "lora", base_model=BASE, trigger=shapes.TRIGGER, steps=STEPS,
        resolution=64, checkpoint_every=STEPS, seed=1, mixed_precision="no", heldout_fraction=0.0,
        validation={"steps": 2, "seeds": [1], "prompts": ["{trigger}"], "scheduler": "euler"},
        **overrides,
    )  # fmt: skip
    result = train(config, tmp_path / "data", tmp_path / "out", cache_dir=tmp_path / "cache",
                   device="cpu")  # fmt: skip
    assert result.status == "completed"

    def score(pipe) -> float:
        images = [scoring.render_prompt(pipe, p, s) for p in prompts for s in seeds]
        return float(np.mean([scoring.concept_score(image) for image in images]))

    base_score = score(load_base(tmp_path / "cache").pipeline)
    pipe = load_for_generation(load_base(tmp_path / "cache"), result.checkpoints[-1].file)
    pipe.set_progress_bar_config(disable=True)
    lora_score = score(pipe)
    assert lora_score >= base_score + MARGIN, (base_score, lora_score)


PRESET_STEPS = 1000
"""Half the character preset's own 2000 steps: its schedule is constant without warm-up, so these
are exactly the first 1000 steps of the preset's run (`bench/learn.py` checkpoints there)."""
PRESET_MARGIN = 0.07
"""Required concept gain of the character preset with `keep_prompts` at step 1000.

`docs/toy-model/learn_bench_v3.json`: gains at step 1000 of 0.125 / 0.125 / 0.195 for training
seeds 1 / 2 / 3; with the empty prompt held too (`learn_bench_v6.json`, the same 18 images)
0.208 / 0.181 / 0.181. The margin is below the smallest."""
PRESET_MAX_CHANGE = 6.0
"""Largest allowed mean pixel change (0-255) on the (held-out) ordinary prompts at step 1000.

With `keep_prompts` the three seeds measured 4.53 / 4.34 / 4.58 (4.34 / 4.27 / 4.67 with the
empty prompt held too, `learn_bench_v6.json`); preserving on the training
captions instead measured 6.8 / 8.7 / 7.5 (`learn_bench_presets_v2.json`), and no preservation
more: a job whose keep prompts stopped holding the LoRA fails here."""


@pytest.mark.slow
def test_character_preset_learns_with_preservation(tmp_path: Path):
    """The `character` preset as a member gets it (lr, rank, preservation) with keep prompts of
    ordinary scenes, on the toy model's native 64 px: it learns the concept and keeps other
    ordinary prompts (held apart from the keep prompts) near the base model's images."""
    from bench.learn import (
        BASE,
        evaluate,
        leak_scenes,
        load_base,
        make_concept_dataset,
        new_context_prompts,
        preservation_prompts,
    )
    from trainer.generate import load_for_generation
    from trainer.leakage import pixel_change
    from trainer.loop import train
    from trainer.presets import apply_preset
    from trainer.toy import shapes

    scenes = make_concept_dataset(tmp_path / "data")
    prompts, leaks, seeds = new_context_prompts(scenes, count=6), leak_scenes(6), [1, 2, 3]
    config = apply_preset(
        "character", "lora", base_model=BASE, trigger=shapes.TRIGGER, steps=PRESET_STEPS,
        checkpoint_every=PRESET_STEPS, seed=1, mixed_precision="no", heldout_fraction=0.0,
        keep_prompts=preservation_prompts(64),
        validation={"steps": 2, "seeds": [1], "prompts": ["{trigger}"], "scheduler": "euler",
                    "leak_prompts": []},
    )  # fmt: skip
    assert config.preservation.enabled and config.resolution is None
    result = train(config, tmp_path / "data", tmp_path / "out", cache_dir=tmp_path / "cache",
                   device="cpu")  # fmt: skip
    assert result.status == "completed"
    base = evaluate(load_base(tmp_path / "cache").pipeline, prompts, leaks, seeds, 20)
    pipe = load_for_generation(load_base(tmp_path / "cache"), result.checkpoints[-1].file)
    pipe.set_progress_bar_config(disable=True)
    trained = evaluate(pipe, prompts, leaks, seeds, 20)
    assert trained["concept"] >= base["concept"] + PRESET_MARGIN, (base, trained)
    change = pixel_change(trained["_leak_images"], base["_leak_images"])
    assert change <= PRESET_MAX_CHANGE, change
