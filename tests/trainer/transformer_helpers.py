"""What the FLUX.1 and Z-Image tests share on their tiny models (`builtin:tiny-flux`,
`builtin:tiny-zimage`): loading, configs, perturbed adapters, and the checks both architectures
pass the same way. Each test file calls these with its own architecture, so a broken
architecture fails its own tests.

rank 4 / alpha 1: a file that loses alpha is off by a clear factor. LoRA B starts at zero, so the
adapters are perturbed before files are compared.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.trainer.train_helpers import make_dataset, perturb
from trainer import loop
from trainer.adapters import inject_adapter
from trainer.base_models import LoadedModel, load_base_model
from trainer.callbacks import RecordingCallbacks
from trainer.config import ArchitectureMismatch, TrainConfig, check_architecture
from trainer.export import export_checkpoint, read_safetensors
from trainer.generate import load_for_generation
from trainer.tiny_model import ensure_tiny_model

BASE = {"flux1": "tiny-flux", "zimage": "tiny-zimage"}
"""The built-in tiny base of each architecture (`builtin:<name>`, `--base-model <name>`)."""
GUIDANCE = {"flux1": 3.5, "zimage": 0.0}
"""Validation guidance: FLUX.1-dev's distilled 3.5; Z-Image-Turbo samples without CFG."""

Output = Callable[[LoadedModel], torch.Tensor]
"""The denoiser's prediction on fixed inputs (each test file's `transformer_out`)."""


def fresh(cache: Path, arch: str) -> LoadedModel:
    model = load_base_model(f"builtin:{BASE[arch]}", arch, cache_dir=cache)
    model.pipeline.set_progress_bar_config(disable=True)
    return model


def config(arch: str, **kw: object) -> TrainConfig:
    base = {
        "base_model": BASE[arch], "rank": 4, "alpha": 1.0, "steps": 10, "checkpoint_every": 5,
        "trigger": "ohwx", "min_snr_gamma": None, "resolution": 32,
        "validation": {"scheduler": "euler", "guidance": GUIDANCE[arch], "steps": 2, "seeds": [1]},
    }  # fmt: skip
    return TrainConfig(**(base | kw))


def perturbed(cache: Path, cfg: TrainConfig, arch: str) -> LoadedModel:
    model = fresh(cache, arch)
    perturb(inject_adapter(model, cfg), 0.2)
    return model


def lora_layers(module: torch.nn.Module, adapter: str) -> list[str]:
    return [n for n, m in module.named_modules() if adapter in getattr(m, "lora_A", {})]


# ---------------------------------------------------------------- checks both pass alike


def assert_flow_interpolation(model: LoadedModel) -> torch.Tensor:
    """x_σ = (1 − σ)x + σε and target ε − x at σ = 0, ½, 1; returns x_σ."""
    x, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    sigma = torch.tensor([0.0, 0.5, 1.0])
    noisy, target = model.arch.noisy_and_target(model, x, eps, sigma)
    torch.testing.assert_close(noisy[0], x[0])
    torch.testing.assert_close(noisy[2], eps[2])
    torch.testing.assert_close(target, eps - x)
    return noisy


def assert_lora_file_reloads(
    cache: Path,
    arch: str,
    out: Output,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    patch_loader: Callable[[LoadedModel], None] | None = None,
) -> list[str]:
    """The main file and the diffusers copy load through `load_lora_weights` with every layer
    taken up, reproduce the trained adapter, and weight 0 is the base; `atelier generate`'s
    loader (`load_for_generation`, run with `patch_loader`'s patches undone) reproduces it too.
    Returns the trained layers."""
    cfg = config(arch)
    model = perturbed(cache, cfg, arch)
    want = out(model)
    files = export_checkpoint(model, cfg, tmp_path, 5, f"{arch} char")
    trained = lora_layers(model.denoiser, "default")
    for source in (files.primary, files.diffusers):
        other = fresh(cache, arch)
        base = out(other)
        if patch_loader:
            patch_loader(other)
        with caplog.at_level(logging.WARNING, logger="diffusers"):
            other.pipeline.load_lora_weights(str(source), adapter_name="atelier")
        # peft/diffusers warn "Loading adapter weights from state_dict led to unexpected /
        # missing keys" when a tensor finds no layer or a layer no tensor
        assert not [r for r in caplog.records if "state_dict led to" in r.getMessage()]
        assert lora_layers(other.denoiser, "atelier") == trained  # no layer left out
        torch.testing.assert_close(out(other), want, atol=2e-5, rtol=1e-4)
        other.pipeline.set_adapters(["atelier"], adapter_weights=[0.0])
        torch.testing.assert_close(out(other), base, atol=1e-6, rtol=0)
    assert not torch.allclose(want, base, atol=1e-3)  # the adapter does change the output
    ours = fresh(cache, arch)  # `atelier generate`: no patch needed
    monkeypatch.undo()
    load_for_generation(ours, files.primary, 1.0)
    assert lora_layers(ours.denoiser, "atelier") == trained
    torch.testing.assert_close(out(ours), want, atol=2e-5, rtol=1e-4)
    return trained


def dora_round_trip(
    cache: Path, arch: str, out: Output, tmp_path: Path
) -> tuple[LoadedModel, dict[str, torch.Tensor]]:
    """A DoRA file (kohya/LyCORIS, no diffusers copy) applied at weight 1 reproduces the trained
    model and at weight 0 is the base. Returns the trained model and the file's tensors."""
    cfg = config(arch, method="dora")
    model = perturbed(cache, cfg, arch)
    want = out(model)
    files = export_checkpoint(model, cfg, tmp_path, 5, "d")
    tensors, meta = read_safetensors(files.primary)
    assert files.diffusers is None and meta["ss_network_module"] == "lycoris.kohya"
    other = fresh(cache, arch)
    base = out(other)
    load_for_generation(other, files.primary, 1.0)
    torch.testing.assert_close(out(other), want, atol=2e-5, rtol=1e-4)
    again = fresh(cache, arch)
    load_for_generation(again, files.primary, 0.0)
    torch.testing.assert_close(out(again), base, atol=1e-5, rtol=1e-5)
    return model, tensors


def assert_trains_end_to_end(arch: str, method: str, tmp_path: Path, cache: Path) -> None:
    """`loop.train` on CPU: two checkpoints, each with a grid and a file, held-out losses."""
    dataset = make_dataset(tmp_path / "data", count=10, size=48)
    callbacks = RecordingCallbacks()
    cfg = config(arch, method=method, steps=4, checkpoint_every=2, batch_size=2, learning_rate=1e-3)
    result = loop.train(cfg, dataset, tmp_path / "out", callbacks, cache_dir=cache, device="cpu")
    assert result.status == "completed" and [c.step for c in result.checkpoints] == [2, 4]
    assert all(c.grid_path and c.grid_path.is_file() for c in result.checkpoints)
    assert all(c.file.is_file() for c in result.checkpoints)
    held = [loss for _, loss in result.heldout_losses]
    assert len(held) == 2 and all(0 < loss < 10 for loss in held)


def common_refusals(arch: str) -> dict[str, TrainConfig]:
    """What neither transformer can do: one-line message words → the config asking for it."""
    return {
        "steps of 16": config(arch, resolution=40),
        "train_text_encoder": config(arch, train_text_encoder=True),
        "min_snr_gamma": config(arch, min_snr_gamma=5.0),
        "'euler'": config(arch, validation={"scheduler": "dpm++"}),
    }


def assert_refused_in_one_line(arch: str, cases: dict[str, TrainConfig]) -> None:
    for words, cfg in cases.items():
        with pytest.raises(ArchitectureMismatch, match=words) as refused:
            check_architecture(cfg, arch)
        assert "\n" not in str(refused.value)


def assert_train_and_generate_clis(
    arch: str, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`atelier train --base-model tiny-<x>` then `atelier generate --base tiny-<x>`."""
    from PIL import Image

    from atelier.settings import load_settings
    from trainer.generate import generate_cli
    from trainer.train_cli import train_cli

    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path / "data-dir"))
    data = make_dataset(tmp_path / "ds", count=2, size=64)
    out = tmp_path / "out"
    argv = ["--dataset", str(data), "--trigger", "ohwx", "--base-model", BASE[arch],
            "--preset", "quick-test", "--steps", "2", "--out", str(out),
            "--cache-dir", str(cache), "--device", "cpu"]  # fmt: skip
    assert train_cli(argv, load_settings) == 0
    files = sorted((out / "checkpoints").glob("*.safetensors"))
    assert files and read_safetensors(files[-1])[1]["ss_base_model_version"] == arch
    png = tmp_path / "x.png"
    argv = ["--model", str(files[-1]), "--prompt", "ohwx", "--base", BASE[arch],
            "--cache-dir", str(cache), "--steps", "2", "--out", str(png)]  # fmt: skip
    assert generate_cli(argv) == 0
    with Image.open(png) as image:
        assert image.size == (64, 64)


# ---------------------------------------------------------------- single-file bases


def single_file_beside_folder(
    cache: Path, arch: str, state: dict[str, torch.Tensor], checkpoint: Path
) -> Path:
    """`checkpoint` (the transformer's `state` in some published layout) and, beside it, a
    diffusers folder named after it whose transformer has its config only: the weights must
    come from the file."""
    save_file({k: v.contiguous() for k, v in state.items()}, str(checkpoint))
    folder = shutil.copytree(ensure_tiny_model(cache, arch), checkpoint.with_suffix(""))
    for weights in (folder / "transformer").glob("*.safetensors"):
        weights.unlink()
    return checkpoint


def assert_loads_as_the_folder(
    cache: Path, arch: str, checkpoint: Path, folder: LoadedModel, out: Output
) -> None:
    """The single file loads to exactly the folder-loaded transformer, tensor for tensor."""
    single = load_base_model(str(checkpoint), arch, cache_dir=cache)
    single.pipeline.set_progress_bar_config(disable=True)
    want, got = folder.denoiser.state_dict(), single.denoiser.state_dict()
    assert want.keys() == got.keys()
    for key, tensor in want.items():
        assert torch.equal(got[key], tensor), key
    torch.testing.assert_close(out(single), out(folder), atol=0, rtol=0)
