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

STEPS = LEARN_STEPS = 200
LEARNING_RATE = None  # the preset's
MARGIN = 0.25
"""Required gain in mean concept score (0-1) over the base model. See MARGIN_NOTE."""
MARGIN_NOTE = "filled in from bench/learn.py runs; see docs/toy-model/README.md"


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
    prompts = new_context_prompts(scenes, count=4)
    seeds = [1, 2]
    overrides = {} if LEARNING_RATE is None else {"learning_rate": LEARNING_RATE}
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
