"""Textual inversion on the toy model learns the concept, and changes nothing but its own rows.

12 images of the concept `tkxw` (a purple star inside a yellow ring, absent from the toy model's
data) train a 4-vector embedding through `train()`. The captions say everything else about each
image ("a big tkxw at the top left on a blue background"), so the new token must carry the
concept itself. The denoising loss on the training images at FIXED timesteps with FIXED noise
(`trainer.heldout`: the same latents, timesteps and noise before and after) must fall by a clear
margin; every weight other than the new tokens' embedding rows must stay bit-identical.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.trainer.train_helpers import _one_thread
from trainer import adapters
from trainer.export import read_safetensors
from trainer.toy import shapes

__all__ = ["_one_thread"]

IMAGES = 12
STEPS = 150
LEARNING_RATE = 5e-3
INITIALIZER = "star"
"""An in-vocabulary word that is half right (the concept has a star): the gain is what the token
learns beyond a sensible start. From `person` (the default, a word the toy model has never drawn)
the loss falls about twice as much (gains 0.370 / 0.362 / 0.346 for seeds 1-3), part of it only
undoing an out-of-distribution start."""
MIN_GAIN = 0.10
"""Required relative fall of the fixed-noise loss, (before - after) / before.

Measured with `measure(tmp, seed=s, data_seed=10 + s)` for s = 1..5 (each seed its own 12
images and training order; 150 steps, lr 5e-3, batch 4, 4 vectors from `star`, CPU, 1 thread):
  seed 1: 0.04536 -> 0.03798 (gain 0.163)   seed 2: 0.06060 -> 0.04732 (0.219)
  seed 3: 0.04355 -> 0.03581 (0.178)        seed 4: 0.04644 -> 0.03962 (0.147)
  seed 5: 0.04286 -> 0.03533 (0.176)
mean gain 0.177, sd 0.026, smallest 0.147. The margin is below the smallest gain (about 3 sd
below the mean), not fitted to seed 1, which this test runs. About 8-12 s per run.
"""


def _snapshot(model: Any) -> dict[str, torch.Tensor]:
    modules = {"unet": model.unet, "vae": model.vae, "te": model.text_encoders[0]}
    return {
        f"{name}.{key}": value.detach().clone()
        for name, module in modules.items()
        for key, value in module.state_dict().items()
    }


def measure(tmp_path: Path, seed: int = 1, data_seed: int = 11, **overrides: Any) -> dict:
    """Train on a fresh concept dataset; the fixed-noise loss before and after, and the model."""
    from bench.learn import make_concept_dataset
    from trainer import loop
    from trainer.config import TrainConfig
    from trainer.data import load_examples
    from trainer.heldout import HeldoutSet, heldout_loss

    dataset = tmp_path / "data"
    make_concept_dataset(dataset, count=IMAGES, seed=data_seed)
    values: dict[str, Any] = {
        "method": "embedding", "base_model": "builtin:toy", "trigger": shapes.TRIGGER,
        "embedding": {"num_vectors": 4, "initializer_token": INITIALIZER, "templates": "captions"},
        "resolution": 64, "batch_size": 4, "steps": STEPS, "checkpoint_every": STEPS,
        "learning_rate": LEARNING_RATE, "heldout_fraction": 0.0, "mixed_precision": "no",
        "seed": seed,
        "validation": {"steps": 2, "seeds": [1], "prompts": ["{trigger}"], "scheduler": "euler"},
        **overrides,
    }  # fmt: skip
    config = TrainConfig(**values)
    seen: dict[str, Any] = {}
    inject = adapters.inject_adapter

    def spy(model: Any, cfg: TrainConfig) -> list[torch.nn.Parameter]:
        seen["frozen"] = _snapshot(model)
        params = inject(model, cfg)
        examples = load_examples(dataset, cfg)
        seen["model"], seen["fixed"] = model, HeldoutSet(model, examples)
        captions = loop.heldout_captions(cfg, seen["fixed"], loop.embedding_prompt(model, cfg))
        seen["captions"] = captions
        seen["before"] = heldout_loss(model, seen["fixed"], captions)
        return params

    started = time.monotonic()
    original = adapters.inject_adapter
    adapters.inject_adapter = spy
    try:
        result = loop.train(
            config, dataset, tmp_path / "out", cache_dir=tmp_path / "cache", device="cpu"
        )
    finally:
        adapters.inject_adapter = original
    seconds = time.monotonic() - started
    assert result.status == "completed" and result.step == STEPS
    after = heldout_loss(seen["model"], seen["fixed"], seen["captions"])
    return {**seen, "after": after, "seconds": seconds, "config": config, "result": result}


@pytest.mark.slow
def test_embedding_learns_the_toy_concept(tmp_path: Path) -> None:
    run = measure(tmp_path)
    before, after = run["before"], run["after"]
    # the images' own captions, the trigger replaced by the four new tokens
    assert len(run["captions"]) == IMAGES
    assert all(" tkxw tkxw_1 tkxw_2 tkxw_3 " in f" {c} " for c in run["captions"]), run["captions"]
    assert (before - after) / before >= MIN_GAIN, (before, after)

    model = run["model"]
    (rows,) = adapters.embedding_rows(model)
    now = _snapshot(model)
    changed, learned = [], None
    for key, old in run["frozen"].items():
        current = now[key]
        if key.startswith("te.") and key.endswith("token_embedding.weight"):
            assert current.shape[0] == old.shape[0] + 4
            assert torch.equal(current[: old.shape[0]], old)  # every row of the base vocabulary
            assert rows.token_ids == list(range(old.shape[0], old.shape[0] + 4))
            start = rows.original[rows.token_ids]
            assert (current[rows.token_ids] - start).abs().amax(dim=1).min() > 1e-3
            learned = current[rows.token_ids]
            continue
        if not torch.equal(current, old):
            changed.append(key)
    assert changed == []
    assert learned is not None and learned.shape[0] == 4  # the matrix was found and checked

    # the file a member downloads holds exactly the learned rows
    tensors, _ = read_safetensors(run["result"].checkpoints[-1].file)
    assert torch.equal(tensors["emb_params"], learned)
