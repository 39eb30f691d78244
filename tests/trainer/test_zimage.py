"""Z-Image on the tiny model: the objective, the file users download, and how loaders read it.

rank 4 / alpha 1: a file that loses alpha is off by a factor of 4. LoRA B starts at zero, so the
adapters are perturbed before files are compared. The main file is read by diffusers'
`ZImagePipeline.load_lora_weights` unchanged (its own Z-Image converter), with no patching.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch

from tests.trainer import transformer_helpers as shared
from trainer.base_models import LoadedModel
from trainer.config import check_architecture
from trainer.export import export_checkpoint, read_safetensors

COMFY_BLOCK_LAYERS = (
    "attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0",
    "feed_forward.w1", "feed_forward.w2", "feed_forward.w3", "adaLN_modulation.0",
)  # fmt: skip
"""Linear layers per block that ComfyUI's `z_image_to_diffusers` maps (comfy/utils.py), for
`layers.*`, `context_refiner.*` and `noise_refiner.*`; q/k/v go to row slices of `qkv`."""
COMFY_PREFIXES = ("diffusion_model.", "transformer.", "")
"""The key forms comfy/lora.py's Lumina2 branch registers for those layers (+ `lycoris_`)."""
COMFY_SUFFIXES = {"lora_up.weight", "lora_down.weight", "alpha", "dora_scale"}
"""What `comfy.lora.load_lora` / `LoRAAdapter.load` read after a layer name (kohya form)."""


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-zimage")


fresh = partial(shared.fresh, arch="zimage")
config = partial(shared.config, "zimage")
perturbed = partial(shared.perturbed, arch="zimage")


@torch.no_grad()
def transformer_out(model: LoadedModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    noisy = torch.randn(2, 4, 8, 8, generator=g)
    text = model.arch.encode_prompts(model, ["ohwx, a photo of a cat", "a red square"])
    return model.arch.predict(model, noisy, torch.tensor([0.3, 0.8]), text)


def test_tiny_zimage_is_built_offline_with_every_part(cache: Path) -> None:
    model = fresh(cache)
    pipe = model.pipeline
    assert type(pipe).__name__ == "ZImagePipeline" and model.denoiser is pipe.transformer
    assert pipe.vae.config.latent_channels == pipe.transformer.config.in_channels
    assert pipe.vae.config.shift_factor and pipe.vae.config.scaling_factor != 1.0
    assert [type(e).__name__ for e in model.text_encoders] == ["Qwen3Model"]
    assert not pipe.scheduler.config.use_dynamic_shifting and pipe.scheduler.config.shift == 3.0
    ids = pipe.tokenizer("ohwx, a photo of a cat").input_ids
    assert len(ids) < len("ohwx, a photo of a cat")  # common words merge into single tokens
    text = model.arch.encode_prompts(model, ["a photo of a cat", "a dog with a red square"])
    assert text.hidden.shape == (2, 64, 32) and text.pooled is None
    lengths = [row.shape[0] for row in model.arch.unpad(text.hidden)]
    states = pipe._encode_prompt(
        ["a photo of a cat", "a dog with a red square"], max_sequence_length=64
    )
    assert lengths == [s.shape[0] for s in states] and lengths[0] < lengths[1]
    torch.testing.assert_close(model.arch.unpad(text.hidden)[1], states[1])
    assert all(not p.requires_grad for p in pipe.transformer.parameters())


def test_flow_matching_objective_and_prediction_convention(cache: Path) -> None:
    """x_σ = (1 − σ)x + σε, target ε − x; σ logit-normal then shifted by the fixed shift 3;
    `predict` is the pipeline's negated transformer output at t = 1 − σ."""
    model = fresh(cache)
    arch, cfg = model.arch, config()
    noisy = shared.assert_flow_interpolation(model)
    sigmas = arch.sample_timesteps(model, cfg, torch.zeros(4000, 4, 8, 8), torch.Generator())
    assert sigmas.min() > 0 and sigmas.max() < 1
    assert abs(float(sigmas.median()) - 0.75) < 0.03  # shift 3 moves the median 0.5 → 0.75
    text = arch.encode_prompts(model, ["a cat"])
    with torch.no_grad():
        ours = arch.predict(model, noisy[:1], torch.tensor([0.5]), text)
        raw = model.denoiser(
            [noisy[0].unsqueeze(1)], torch.tensor([0.5]), arch.unpad(text.hidden), return_dict=False
        )[0][0]
    torch.testing.assert_close(ours[0], -raw.squeeze(1))


def test_lora_file_reloads_in_diffusers(cache: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    """The main file and the diffusers copy load through `load_lora_weights` unchanged, with
    every layer taken up, reproduce the trained adapter, and weight 0 is the base."""
    trained = shared.assert_lora_file_reloads(
        cache, "zimage", transformer_out, tmp_path, caplog, monkeypatch
    )
    assert len(trained) == 7 * 4  # 7 layers × (2 main + 1 noise + 1 context refiner blocks)


def comfy_layers(model: LoadedModel) -> dict[str, str]:
    """ComfyUI's accepted LoRA layer names for this base → the diffusers layer they patch."""
    t = model.denoiser
    blocks = [f"layers.{i}" for i in range(len(t.layers))]
    blocks += [f"{kind}.{i}" for kind in ("context_refiner", "noise_refiner")
               for i in range(len(getattr(t, kind)))]  # fmt: skip
    return {prefix + f"{block}.{layer}": f"{block}.{layer}"
            for block in blocks for layer in COMFY_BLOCK_LAYERS
            for prefix in COMFY_PREFIXES}  # fmt: skip


def test_keys_match_comfyui_and_carry_alpha(cache: Path, tmp_path: Path) -> None:
    cfg = config()
    model = perturbed(cache, cfg)
    tensors, meta = read_safetensors(export_checkpoint(model, cfg, tmp_path, 5, "x").primary)
    accepted = comfy_layers(model)
    for key in tensors:
        layer = next(key.removesuffix("." + s) for s in COMFY_SUFFIXES if key.endswith("." + s))
        assert key.startswith("diffusion_model.") and layer in accepted
    assert {k.rsplit(".", 2)[-2] + "." + k.rsplit(".", 1)[-1] for k in tensors if "lora" in k} == {
        "lora_down.weight", "lora_up.weight"
    }  # fmt: skip
    alphas = [k for k in tensors if k.endswith(".alpha")]
    assert len(alphas) == 28 and all(float(tensors[k]) == 1.0 for k in alphas)
    assert all(t.dtype == torch.float32 for t in tensors.values())
    dim = model.denoiser.config.dim
    q = "diffusion_model.layers.0.attention.to_q"
    # ComfyUI patches rows [0, dim) of the fused qkv with it: the update must be dim rows
    assert tensors[f"{q}.lora_up.weight"].shape == (dim, 4)
    assert tensors[f"{q}.lora_down.weight"].shape == (4, dim)
    assert meta["modelspec.architecture"] == "Z-Image/lora"
    assert meta["modelspec.implementation"] == "https://github.com/Tongyi-MAI/Z-Image"
    assert meta["ss_base_model_version"] == "zimage" and meta["ss_network_dim"] == "4"


def test_dora_file_round_trips(cache: Path, tmp_path: Path) -> None:
    model, tensors = shared.dora_round_trip(cache, "zimage", transformer_out, tmp_path)
    key = "diffusion_model.layers.1.feed_forward.w2.dora_scale"
    width = model.denoiser.layers[1].feed_forward.w2.base.in_features
    assert tensors[key].shape == (1, width)  # kohya / LyCORIS: one per input column


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_trains_end_to_end_on_tiny_zimage(method: str, tmp_path: Path, cache: Path) -> None:
    shared.assert_trains_end_to_end("zimage", method, tmp_path, cache)


def test_zimage_refuses_what_it_cannot_do_in_one_line() -> None:
    check_architecture(config(), "zimage")
    guided = {"scheduler": "euler", "guidance": 4.0, "negative_prompt": "blurry"}
    check_architecture(config(validation=guided), "zimage")  # base Z-Image: CFG + negative
    cases = {
        "Z-Image models cannot train embeddings": config(method="embedding"),
        **shared.common_refusals("zimage"),
        "negative prompt only with guidance above 0": config(validation=guided | {"guidance": 0.0}),
    }
    shared.assert_refused_in_one_line("zimage", cases)


def test_train_and_generate_clis_on_tiny_zimage(cache: Path, tmp_path: Path, monkeypatch) -> None:
    """`atelier train --base-model tiny-zimage` then `atelier generate --base tiny-zimage`."""
    shared.assert_train_and_generate_clis("zimage", cache, tmp_path, monkeypatch)
