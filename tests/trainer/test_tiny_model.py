"""The built-in tiny models build once, load in diffusers, and come back frozen."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from atelier.settings import AtelierSettings
from trainer.base_models import BaseModelError, load_base_model, resolve_base_model
from trainer.tiny_model import ensure_tiny_model


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-cache")


def test_tiny_model_is_cached_and_deterministic(tiny_cache: Path, tmp_path: Path) -> None:
    first = ensure_tiny_model(tiny_cache, "sd1")
    assert ensure_tiny_model(tiny_cache, "sd1") == first
    assert not [p for p in tiny_cache.iterdir() if p.name.startswith(".")]  # no temp left
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        assert (first / "tokenizer" / name).is_file()
    other = ensure_tiny_model(tmp_path, "sd1")
    a = (first / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    b = (other / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert a == b


def test_tokenizer_knows_common_words(tiny_cache: Path) -> None:
    model = load_base_model("builtin:tiny", "sd1", cache_dir=tiny_cache)
    tokens = model.tokenizers[0].tokenize("a photo of a cat, xyz")
    assert tokens[:5] == ["a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>"]
    assert model.tokenizers[0].model_max_length == 77


@pytest.mark.parametrize(
    ("path", "arch", "n_encoders"),
    [
        ("builtin:tiny", "sd1", 1),
        ("builtin:tiny-sdxl", "sdxl", 2),
    ],
)
def test_load_base_model_frozen_and_renders(
    tiny_cache: Path, path: str, arch: str, n_encoders: int
) -> None:
    model = load_base_model(path, arch, cache_dir=tiny_cache)
    assert model.architecture == arch
    assert len(model.text_encoders) == len(model.tokenizers) == n_encoders
    assert model.prediction_type == "epsilon"
    assert type(model.noise_scheduler).__name__ == "DDPMScheduler"
    modules = [model.unet, model.vae, *model.text_encoders]
    assert not any(p.requires_grad for m in modules for p in m.parameters())
    assert model.vae.dtype == torch.float32
    image = model.pipeline(
        "a photo", num_inference_steps=2, height=64, width=64,
        generator=torch.Generator().manual_seed(0),
    ).images[0]  # fmt: skip
    assert image.size == (64, 64)


def test_folder_path_and_catalogue(tiny_cache: Path) -> None:
    settings = AtelierSettings(data_dir=tiny_cache)
    assert resolve_base_model("tiny", settings) == ("builtin:tiny", "sd1")
    assert resolve_base_model("tiny-sdxl", settings) == ("builtin:tiny-sdxl", "sdxl")
    folder = ensure_tiny_model(tiny_cache, "sdxl")
    assert resolve_base_model(str(folder), settings) == (str(folder), "sdxl")
    model = load_base_model(str(folder), "sdxl", cache_dir=tiny_cache)
    assert model.is_sdxl
    with pytest.raises(BaseModelError, match="unknown base model"):
        resolve_base_model("nope", settings)


def test_single_file_without_config_is_a_clear_error(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(checkpoint))
    with pytest.raises(BaseModelError, match="local diffusers config folder"):
        load_base_model(str(checkpoint), "sd1", cache_dir=tmp_path)
