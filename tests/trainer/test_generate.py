"""Generation from exported files: schedulers, determinism, weight, and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.adapters import inject_adapter
from trainer.base_models import load_base_model
from trainer.config import TrainConfig
from trainer.export import export_checkpoint
from trainer.generate import generate_cli, load_for_generation, render
from trainer.schedulers import SCHEDULER_NAMES, make_scheduler


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="module")
def lora_file(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = TrainConfig(rank=4, alpha=1.0, steps=10, checkpoint_every=5, trigger="sks")
    model = load_base_model("builtin:tiny", "sd1", cache_dir=cache)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in inject_adapter(model, cfg):
            param.add_(torch.randn_like(param) * 0.5)
    out = tmp_path_factory.mktemp("out")
    return export_checkpoint(model, cfg, out, 10, "gen").primary


def test_scheduler_names_map_to_diffusers_classes(cache: Path) -> None:
    base = load_base_model("builtin:tiny", "sd1", cache_dir=cache).noise_scheduler.config
    names = {name: type(make_scheduler(name, base)).__name__ for name in SCHEDULER_NAMES}
    assert names == {
        "dpm++": "DPMSolverMultistepScheduler",
        "euler_a": "EulerAncestralDiscreteScheduler",
        "ddim": "DDIMScheduler",
        "euler": "EulerDiscreteScheduler",
    }
    dpm = make_scheduler("dpm++", base)
    assert not make_scheduler("euler", dpm.config).config.get("use_karras_sigmas")
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_scheduler("plms", base)


def _image(pipe: object, seed: int = 3, scheduler: str = "euler") -> np.ndarray:
    image = render(pipe, "a photo of sks", seed=seed, steps=2, guidance=5.0,
                   scheduler=scheduler, width=64, height=64)  # fmt: skip
    return np.asarray(image, dtype=np.int16)


def test_render_is_deterministic_and_weight_matters(cache: Path, lora_file: Path) -> None:
    base = load_base_model("builtin:tiny", "sd1", cache_dir=cache)
    base.pipeline.set_progress_bar_config(disable=True)
    plain = _image(base.pipeline)
    assert np.array_equal(_image(base.pipeline), plain)
    pipe = load_for_generation(base, lora_file, 0.0)
    assert np.array_equal(_image(pipe), plain)
    pipe.set_adapters(["atelier"], adapter_weights=[1.0])
    assert not np.array_equal(_image(pipe), plain)


def test_generate_cli_writes_an_image(cache: Path, lora_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "img.png"
    argv = ["--model", str(lora_file), "--prompt", "sks", "--steps", "2", "--seed", "1",
            "--scheduler", "dpm++", "--cache-dir", str(cache), "--out", str(out)]  # fmt: skip
    assert generate_cli(argv) == 0
    from PIL import Image

    assert Image.open(out).size == (64, 64)
    assert generate_cli(["--model", str(tmp_path / "missing.safetensors"), "--prompt", "x"]) == 2
