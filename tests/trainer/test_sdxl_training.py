"""Training on the SDXL-shaped tiny model end to end: LoRA and embedding through `train()`.

Each method trains a few steps on `tiny-sdxl` (catalogue name), then the test checks the
exported file the way a member's app would see it: SDXL naming (kohya LoRA keys with the
Stability `input_blocks` / `middle_block` / `output_blocks` names and `lora_te1_` / `lora_te2_`
for the two text encoders; an embedding with one `clip_l` and one `clip_g` tensor), weights that
really moved away from their initial values, and a reload into a *fresh* tiny-SDXL pipeline
through `trainer.generate.load_for_generation` that renders a 64-px image different from the
base model's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.trainer.train_helpers import _one_thread, make_dataset, model_cache, tiny_config
from trainer.base_models import load_base_model
from trainer.export import read_safetensors
from trainer.generate import load_for_generation, render
from trainer.loop import train

__all__ = ["_one_thread", "model_cache"]

STEPS = 6
PROMPT = "a photo of ohwx"
MIN_PIXEL_CHANGE = 0.5
"""Mean absolute change (0-255 grey levels) an adapter must make to the 2-step render. Measured:
LoRA vs base 4.47; embedding vs base 2.42; learned vs initial embedding vectors 2.00."""


def _config(method: str, **overrides):
    values = {
        "base_model": "tiny-sdxl", "method": method, "steps": STEPS, "checkpoint_every": STEPS,
        "resolution": 64, "batch_size": 2, "mixed_precision": "no", "heldout_fraction": 0.0,
        "validation": {"steps": 2, "seeds": [1], "prompts": ["{trigger}"], "scheduler": "euler"},
        **overrides,
    }  # fmt: skip
    return tiny_config(**values)


def _fresh_pipeline(cache: Path):
    base = load_base_model("builtin:tiny-sdxl", "sdxl", cache_dir=cache)
    base.pipeline.set_progress_bar_config(disable=True)
    return base


def _render(pipe) -> np.ndarray:
    image = render(pipe, PROMPT, seed=3, steps=2, guidance=5.0, scheduler="euler",
                   width=64, height=64)  # fmt: skip
    assert image.size == (64, 64)
    return np.asarray(image, dtype=np.int16)


def _train(config, tmp_path: Path, cache: Path) -> Path:
    dataset = make_dataset(tmp_path / "data", count=4, size=64)
    result = train(config, dataset, tmp_path / "out", cache_dir=cache, device="cpu")
    assert result.status == "completed" and result.step == STEPS
    (checkpoint,) = result.checkpoints
    assert checkpoint.step == STEPS and checkpoint.file.is_file()
    assert checkpoint.grid_path is not None and checkpoint.grid_path.is_file()
    return checkpoint.file


@pytest.mark.slow
def test_sdxl_lora_trains_exports_and_reloads(tmp_path: Path, model_cache: Path) -> None:
    config = _config("lora", learning_rate=1e-2, train_text_encoder=True)
    file = _train(config, tmp_path, model_cache)
    assert file.name == f"ohwx-step{STEPS:08d}.safetensors"
    diffusers_copy = tmp_path / "out" / "checkpoints" / "diffusers" / file.stem
    assert (diffusers_copy / "pytorch_lora_weights.safetensors").is_file()

    tensors, meta = read_safetensors(file)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    modules = {key.split(".", 1)[0] for key in tensors}
    unet = {m for m in modules if m.startswith("lora_unet_")}
    for block in ("input_blocks", "middle_block", "output_blocks"):
        assert any(m.startswith(f"lora_unet_{block}_") for m in unet), block
    assert not any("down_blocks" in m or "up_blocks" in m or "mid_block" in m for m in unet)
    assert any(m.startswith("lora_te1_text_model_") for m in modules)
    assert any(m.startswith("lora_te2_text_model_") for m in modules)
    assert modules == unet | {m for m in modules if m.startswith(("lora_te1_", "lora_te2_"))}
    for module in modules:
        assert {f"{module}.{s}" for s in ("lora_down.weight", "lora_up.weight", "alpha")} <= (
            tensors.keys()
        )
    # B (lora_up) starts at zero: every B that training can reach has moved. SDXL reads the
    # first encoder's penultimate layer only, so its last layer (1 of the tiny model's 2) gets
    # no gradient: its B stays zero, as in any SDXL trainer.
    unused = "lora_te1_text_model_encoder_layers_1_"
    ups = {k: v for k, v in tensors.items() if k.endswith(".lora_up.weight")}
    still = sorted(k for k, v in ups.items() if not v.abs().max() > 0)
    assert all(k.startswith(unused) for k in still), still[:3]

    base = _fresh_pipeline(model_cache)
    plain = _render(base.pipeline)
    pipe = load_for_generation(base, file)
    assert pipe is base.pipeline
    with_lora = _render(pipe)
    assert np.abs(with_lora - plain).mean() > MIN_PIXEL_CHANGE, np.abs(with_lora - plain).mean()


@pytest.mark.slow
def test_sdxl_embedding_trains_exports_and_reloads(tmp_path: Path, model_cache: Path) -> None:
    config = _config(
        "embedding", learning_rate=5e-2,
        embedding={"num_vectors": 2, "initializer_token": "cat"},
    )  # fmt: skip
    file = _train(config, tmp_path, model_cache)
    assert file.name == "ohwx.safetensors" and file.parent.name == f"ohwx-step{STEPS:08d}"

    tensors, meta = read_safetensors(file)
    assert set(tensors) == {"clip_l", "clip_g"}
    assert tensors["clip_l"].shape == tensors["clip_g"].shape == (2, 32)
    assert meta["modelspec.trigger_phrase"] == "ohwx"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/textual-inversion"

    base = _fresh_pipeline(model_cache)
    initial = []  # what training started from: the initializer's vector, in both encoders
    for tokenizer, encoder in zip(base.tokenizers, base.text_encoders, strict=True):
        ids = tokenizer.encode("cat", add_special_tokens=False)
        initial.append(encoder.get_input_embeddings().weight[ids].mean(0).detach())
    for name, start in zip(("clip_l", "clip_g"), initial, strict=True):
        for row in tensors[name]:
            assert (row - start).abs().max() > 1e-3, name

    plain = _render(base.pipeline)
    pipe = load_for_generation(base, file)
    assert pipe.maybe_convert_prompt(PROMPT, pipe.tokenizer) == "a photo of ohwx ohwx_1"
    learned = _render(pipe)
    assert np.abs(learned - plain).mean() > MIN_PIXEL_CHANGE, np.abs(learned - plain).mean()

    # the learned vectors themselves matter, not only the new tokens: put the initializer's
    # vector back in their rows and the image changes
    with torch.no_grad():
        for tokenizer, encoder, start in zip(base.tokenizers, base.text_encoders, initial,
                                             strict=True):  # fmt: skip
            ids = tokenizer.convert_tokens_to_ids(["ohwx", "ohwx_1"])
            encoder.get_input_embeddings().weight[ids] = start
    untrained = _render(pipe)
    assert np.abs(untrained - learned).mean() > MIN_PIXEL_CHANGE, np.abs(untrained - learned).mean()
