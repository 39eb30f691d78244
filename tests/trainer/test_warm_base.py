"""The worker's warm base: loaded once; a LoRA, DoRA or embedding request through it renders what
it renders on a freshly loaded base, and a plain render afterwards is pixel for pixel the fresh
base's (every architecture, tiny models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from atelier.settings import load_settings
from tests.trainer.train_helpers import perturb
from trainer.adapters import inject_adapter
from trainer.base_models import LoadedModel, load_base_model
from trainer.config import TrainConfig
from trainer.export import export_checkpoint
from trainer.generate import load_for_generation, render
from trainer.render_pipeline import render_pipeline
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
    """The tiny models' cache, where a worker with data_dir `cache.parent` looks for them."""
    return tmp_path_factory.mktemp("data") / "cache"


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
    perturb(inject_adapter(model, cfg), 0.5)
    return export_checkpoint(model, cfg, out / method, 5, method).primary


def _image(pipe: object, arch: str) -> np.ndarray:
    scheduler = "euler" if arch in ("flux1", "zimage") else "dpm++"
    image = render(pipe, "a photo of sks", seed=7, steps=2, guidance=3.0,
                   scheduler=scheduler, width=32, height=32)  # fmt: skip
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("arch", ["sd1", "sdxl", "flux1", "zimage"])
def test_warm_base_is_loaded_once_and_never_carries_a_request(
    cache: Path, tmp_path: Path, arch: str
) -> None:
    methods = METHODS.get(arch, ("lora", "dora"))
    files = [_file(cache, tmp_path, arch, method) for method in methods]
    fresh = _image(_load(cache, arch).pipeline, arch)
    warm = WarmBase()
    for path in files:
        with warm.checkout(arch, lambda: _load(cache, arch)) as base:
            applied = _image(load_for_generation(base, path, 1.0), arch)
        # the file changed the render, and exactly as it does on a freshly loaded base
        assert not np.array_equal(applied, fresh), path.name
        on_fresh = _image(load_for_generation(_load(cache, arch), path, 1.0), arch)
        assert np.array_equal(applied, on_fresh), path.name
        with warm.checkout(arch, lambda: _load(cache, arch)) as base:
            assert np.array_equal(_image(base.pipeline, arch), fresh), path.name
    assert warm.loads == 1


def test_a_write_into_a_base_weight_drops_the_base(cache: Path) -> None:
    warm = WarmBase()
    # the view shares the weights' memory: a write in place reaches the base
    with warm.checkout("sd1", lambda: _load(cache, "sd1")) as base, torch.no_grad():
        next(base.denoiser.parameters()).add_(1.0)
    with warm.checkout("sd1", lambda: _load(cache, "sd1")):
        pass
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


def test_renders_for_jobs_on_other_bases_get_their_own_base(cache: Path, tmp_path: Path) -> None:
    """The worker's path (`render_pipeline`): jobs on tiny and tiny-sdxl in turn; each render is
    the one a fresh load of its base gives, and one base is kept at a time."""
    settings = load_settings(data_dir=cache.parent, worker={"device": "cpu"})
    names = {"sd1": "tiny", "sdxl": "tiny-sdxl"}
    files = {arch: _file(cache, tmp_path / arch, arch, "lora") for arch in names}
    warm = WarmBase()
    for arch in ("sd1", "sdxl", "sd1"):
        with render_pipeline(settings, names[arch], files[arch], 1.0, warm) as pipe:
            got = _image(pipe, arch)
        expected = _image(load_for_generation(_load(cache, arch), files[arch], 1.0), arch)
        assert np.array_equal(got, expected), arch
    assert warm.loads == 3
