"""Small datasets and configs for the training-process tests (tiny model, CPU, seconds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from trainer.config import TrainConfig


def make_dataset(folder: Path, count: int = 4, size: int = 64, ingested: bool = True) -> Path:
    """Coloured squares: an ingested folder (captions.jsonl) or images with .txt side-cars."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for index in range(count):
        array = np.zeros((size, size, 3), dtype=np.uint8)
        array[...] = rng.integers(0, 255, 3)
        quarter = size // 4
        array[quarter : 3 * quarter, quarter : 3 * quarter] = rng.integers(0, 255, 3)
        name = f"images/{index:04d}.png" if ingested else f"{index:04d}.png"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(folder / name)
        text = f"ohwx, a photo of a cat, red, square {index}"
        rows.append({"file": name, "text": text})
        if not ingested:
            (folder / name).with_suffix(".txt").write_text(text, encoding="utf-8")
    if ingested:
        lines = "\n".join(json.dumps(row) for row in rows) + "\n"
        (folder / "captions.jsonl").write_text(lines, encoding="utf-8")
    return folder


def tiny_config(**overrides: Any) -> TrainConfig:
    """A config small enough for a few seconds of CPU training on the tiny model."""
    values: dict[str, Any] = {
        "base_model": "tiny",
        "trigger": "ohwx",
        "resolution": 64,
        "batch_size": 2,
        "steps": 8,
        "checkpoint_every": 4,
        "learning_rate": 1e-3,
        "validation": {"steps": 2, "seeds": [1], "prompts": ["{trigger}"], "scheduler": "euler"},
    }
    values.update(overrides)
    return TrainConfig(**values)


def perturb(params: list[Any], scale: float) -> None:
    """Move adapter weights off their init (LoRA B starts at zero, so a file of the untouched
    adapter would equal the base) by seeded noise of std `scale`; leaves torch seeded at 0."""
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for param in params:
            param.add_(torch.randn_like(param) * scale)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder per test session: the tiny model is built once, latents cached per test."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    """Two cores are shared by everyone: keep torch to one thread (also makes timings stable)."""
    import torch

    torch.set_num_threads(1)
