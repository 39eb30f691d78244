"""The worker's warm base: loaded once, and after LoRA, DoRA and embedding requests it renders
exactly what a freshly loaded base renders (every architecture, tiny models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.adapters import inject_adapter
from trainer.base_models import LoadedModel, load_base_model
from trainer.config import TrainConfig
from trainer.export import export_checkpoint
from trainer.generate import load_for_generation, render
from trainer.warm_base import WarmBase

PATHS = {
    "sd1": "builtin:tiny",
    "sdxl": "builtin:tiny-sdxl",
    "flux1": "builtin:tiny-flux",
    "zimage": "builtin:tiny-zimage",
}
METHODS = {"sd1": ("lora", "dora", "embedding"), "sdxl": ("lora", "dora", "embedding")}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny")


def _load(cache: Path, arch: str) -> LoadedModel:
    model = load_base_model(PATHS[arch], arch, cache_dir=cache)
    model.pipeline.set_progress_bar_config(disable=True)
    return model


def _file(cache: Path, out: Path, arch: str, method: str) -> Path:
    """An exported file of `method`, its weights moved well away from their init."""
    extra = {"embedding": {"num_vectors": 2, "initializer_token": "cat"}}
    text = arch in ("sd1", "sdxl") and method != "embedding"
    cfg = TrainConfig(rank=4, alpha=4.0, steps=10, checkpoint_every=5, trigger="sks",
                      method=method, train_text_encoder=text,
                      **(extra if method == "embedding" else {}))  # fmt: skip
    model = _load(cache, arch)
    params = inject_adapter(model, cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in params:
            param.add_(torch.randn_like(param) * 0.5)
    return export_checkpoint(model, cfg, out / method, 5, method).primary


def _image(pipe: object, arch: str) -> np.ndarray:
    scheduler = "euler" if arch in ("flux1", "zimage") else "dpm++"
    image = render(pipe, "a photo of sks", seed=7, steps=2, guidance=3.0,
                   scheduler=scheduler, width=32, height=32)  # fmt: skip
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("arch", ["sd1", "sdxl", "flux1", "zimage"])
def test_warm_base_is_loaded_once_and_restored_exactly(
    cache: Path, tmp_path: Path, arch: str
) -> None:
    methods = METHODS.get(arch, ("lora", "dora"))
    files = [_file(cache, tmp_path, arch, method) for method in methods]
    fresh = _image(_load(cache, arch).pipeline, arch)
    warm = WarmBase()
    pipes, changed = [], []
    for path in files:
        with warm.checkout(arch, lambda: _load(cache, arch)) as base:
            pipe = load_for_generation(base, path, 1.0)
            changed.append(not np.array_equal(_image(pipe, arch), fresh))
            pipes.append(pipe)
    with warm.checkout(arch, lambda: _load(cache, arch)) as base:
        again = _image(base.pipeline, arch)
        pipes.append(base.pipeline)
    assert warm.loads == 1
    assert all(p is pipes[0] for p in pipes)
    assert all(changed), "every file changed the render, so restoring it is what is tested"
    assert np.array_equal(again, fresh)


def test_a_failed_restore_drops_the_base(cache: Path) -> None:
    warm = WarmBase()
    with warm.checkout("sd1", lambda: _load(cache, "sd1")) as base:
        first = base.pipeline
        with torch.no_grad():  # a write into a base weight cannot be undone from references
            next(base.denoiser.parameters()).add_(1.0)
    with warm.checkout("sd1", lambda: _load(cache, "sd1")) as base:
        assert base.pipeline is not first
    assert warm.loads == 2


def test_another_base_replaces_the_warm_one(cache: Path) -> None:
    warm = WarmBase()
    with warm.checkout("sd1", lambda: _load(cache, "sd1")):
        pass
    with warm.checkout("sdxl", lambda: _load(cache, "sdxl")) as base:
        assert base.architecture == "sdxl"
    with warm.checkout("sdxl", lambda: _load(cache, "sdxl")):
        pass
    assert warm.loads == 2
