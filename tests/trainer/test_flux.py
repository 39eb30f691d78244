"""FLUX.1 on the tiny model: the objective, the files users download, and how loaders read them.

rank 4 / alpha 1: a file that loses alpha, or fuses q/k/v wrongly, is off by a clear factor.
LoRA B starts at zero, so the adapters are perturbed before files are compared.

diffusers' kohya FLUX converter (`_convert_kohya_flux_lora_to_diffusers`, 0.42) hard-codes
FLUX.1's single-block widths (3072 × 3 for q/k/v, 12288 for the MLP) when it splits `linear1`;
real FLUX.1 files load, but one for a narrower model fails its size check. The reload test
therefore runs diffusers' own converter with only those four numbers replaced by the tiny
model's widths (`tiny_width_converter`); every other line is diffusers' code.
"""

from __future__ import annotations

import inspect
import re
from functools import partial
from pathlib import Path

import pytest
import torch

from tests.trainer import transformer_helpers as shared
from trainer.architectures.base import TextConditioning
from trainer.base_models import LoadedModel
from trainer.config import check_architecture
from trainer.export import export_checkpoint, kohya_to_peft, read_safetensors

INVOKEAI_KOHYA_FLUX = re.compile(
    r"lora_unet_(\w+_blocks)_(\d+)_(img_attn|img_mlp|img_mod|txt_attn|txt_mlp|txt_mod|linear1"
    r"|linear2|modulation)_?(.*)"
)
"""InvokeAI's `FLUX_KOHYA_TRANSFORMER_KEY_REGEX` (flux_kohya_lora_conversion_utils.py)."""
BFL_DOUBLE = ("img_attn.qkv", "img_attn.proj", "img_mlp.0", "img_mlp.2", "img_mod.lin",
              "txt_attn.qkv", "txt_attn.proj", "txt_mlp.0", "txt_mlp.2", "txt_mod.lin")  # fmt: skip
BFL_SINGLE = ("linear1", "linear2", "modulation.lin")
"""Linear layers of BFL's `DoubleStreamBlock` / `SingleStreamBlock` (flux/modules/layers.py)."""


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-flux")


fresh = partial(shared.fresh, arch="flux1")
config = partial(shared.config, "flux1")
perturbed = partial(shared.perturbed, arch="flux1")


@torch.no_grad()
def transformer_out(model: LoadedModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    noisy = torch.randn(2, 4, 8, 8, generator=g)
    text = TextConditioning(torch.randn(2, 32, 32, generator=g), torch.randn(2, 32, generator=g))
    return model.arch.predict(model, noisy, torch.tensor([0.3, 0.8]), text)


def tiny_width_converter(transformer: torch.nn.Module):
    """diffusers' kohya FLUX converter with FLUX.1's hard-coded `linear1` widths replaced by the
    tiny model's (see the module docstring); compiled from diffusers' own source."""
    from diffusers.loaders import lora_conversion_utils as conversion

    source = inspect.getsource(conversion._convert_kohya_flux_lora_to_diffusers)
    hard_coded = "dims=[3072, 3072, 3072, 12288]"
    assert source.count(hard_coded) == 1
    inner = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    mlp = transformer.single_transformer_blocks[0].proj_mlp.out_features
    source = source.replace(hard_coded, f"dims=[{inner}, {inner}, {inner}, {mlp}]")
    namespace = dict(vars(conversion))
    exec(compile(source, conversion.__file__, "exec"), namespace)
    return namespace["_convert_kohya_flux_lora_to_diffusers"]


def test_tiny_flux_is_built_offline_with_every_part(cache: Path) -> None:
    model = fresh(cache)
    pipe = model.pipeline
    assert type(pipe).__name__ == "FluxPipeline" and model.denoiser is pipe.transformer
    assert pipe.transformer.config.guidance_embeds  # behaves like dev
    assert pipe.vae.config.latent_channels * 4 == pipe.transformer.config.in_channels
    assert pipe.vae.config.shift_factor and pipe.vae.config.scaling_factor != 1.0
    assert [type(e).__name__ for e in model.text_encoders] == ["CLIPTextModel", "T5EncoderModel"]
    ids = pipe.tokenizer_2("ohwx, a photo of a cat").input_ids
    assert pipe.tokenizer_2.unk_token_id not in ids[:-1]  # every piece known, no sentencepiece
    text = model.arch.encode_prompts(model, ["a photo of a cat", "a dog"])
    assert text.hidden.shape == (2, 32, 32) and text.pooled.shape == (2, 32)
    assert all(not p.requires_grad for p in pipe.transformer.parameters())


def test_flow_matching_objective(cache: Path) -> None:
    """x_σ = (1 − σ)x + σε, target ε − x; σ drawn logit-normal then shifted like the scheduler."""
    model = fresh(cache)
    arch, cfg = model.arch, config()
    shared.assert_flow_interpolation(model)
    small = arch.sample_timesteps(model, cfg, torch.zeros(4000, 4, 8, 8), torch.Generator())
    large = arch.sample_timesteps(model, cfg, torch.zeros(4000, 4, 128, 128), torch.Generator())
    assert small.min() > 0 and small.max() < 1
    assert large.mean() > small.mean() + 0.05  # dev's resolution-dependent shift: more noise
    from diffusers import FlowMatchEulerDiscreteScheduler

    model.noise_scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)  # schnell: no shift
    plain = arch.sample_timesteps(model, cfg, torch.zeros(4000, 4, 8, 8), torch.Generator())
    assert abs(float(plain.mean()) - 0.5) < 0.02  # logit-normal(0, 1) is centred on 0.5


def test_lora_file_reloads_in_diffusers(cache: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    """The kohya file (main download) and the diffusers copy load through `load_lora_weights`
    (diffusers' converter at the tiny widths) with every layer taken up, reproduce the trained
    adapter, and weight 0 is the base; `atelier generate` needs no width patch (our exact
    split)."""
    from diffusers.loaders import lora_pipeline

    def patch(other: LoadedModel) -> None:
        converter = tiny_width_converter(other.denoiser)
        monkeypatch.setattr(lora_pipeline, "_convert_kohya_flux_lora_to_diffusers", converter)

    shared.assert_lora_file_reloads(
        cache, "flux1", transformer_out, tmp_path, caplog, monkeypatch, patch
    )


def test_kohya_keys_fuse_qkv_and_match_comfyui_and_invokeai(cache: Path, tmp_path: Path) -> None:
    cfg = config()
    model = perturbed(cache, cfg)
    tensors, meta = read_safetensors(export_checkpoint(model, cfg, tmp_path, 5, "x").primary)
    double, single = len(model.denoiser.transformer_blocks), 2
    bfl = {f"double_blocks.{i}.{name}" for i in range(double) for name in BFL_DOUBLE}
    bfl |= {f"single_blocks.{i}.{name}" for i in range(single) for name in BFL_SINGLE}
    comfy = {"lora_unet_" + path.replace(".", "_"): path for path in bfl}  # comfy/lora.py
    layers = {key.partition(".")[0] for key in tensors}
    assert layers <= comfy.keys()
    for layer in layers:
        match = INVOKEAI_KOHYA_FLUX.fullmatch(layer)
        assert match is not None
        invoke = ".".join(g for g in match.groups() if g)  # InvokeAI's replace_func
        assert invoke == comfy[layer]
    assert {key.partition(".")[2] for key in tensors} == {
        "lora_down.weight", "lora_up.weight", "alpha"
    }  # fmt: skip
    assert all(t.dtype == torch.float32 for t in tensors.values())
    qkv = "lora_unet_double_blocks_0_img_attn_qkv"
    assert tensors[f"{qkv}.lora_down.weight"].shape == (12, 32)  # 3 × rank 4, stacked
    assert float(tensors[f"{qkv}.alpha"]) == 3.0  # 3 × alpha: alpha / rank unchanged
    assert tensors["lora_unet_single_blocks_1_linear1.lora_up.weight"].shape == (3 * 32 + 128, 16)
    assert float(tensors["lora_unet_double_blocks_1_img_mlp_0.alpha"]) == 1.0
    # the fused update is exactly the separate q, k, v updates stacked
    peft = model.denoiser
    fused = tensors[f"{qkv}.lora_up.weight"] @ tensors[f"{qkv}.lora_down.weight"] * 3.0 / 12
    separate = torch.cat(
        [
            peft.get_submodule(f"transformer_blocks.0.attn.{n}").lora_B["default"].weight
            @ peft.get_submodule(f"transformer_blocks.0.attn.{n}").lora_A["default"].weight
            * 0.25
            for n in ("to_q", "to_k", "to_v")
        ]
    )
    torch.testing.assert_close(fused, separate.detach())
    assert meta["modelspec.architecture"] == "flux-1-dev/lora"
    assert meta["ss_base_model_version"] == "flux1" and "modelspec.prediction_type" not in meta
    back = kohya_to_peft(tensors, fresh(cache))["transformer"]
    torch.testing.assert_close(
        back["transformer_blocks.0.attn.to_k.lora_B.weight"],
        peft.get_submodule("transformer_blocks.0.attn.to_k").lora_B["default"].weight.detach(),
    )


def test_dora_file_round_trips_on_fused_layers(cache: Path, tmp_path: Path) -> None:
    _, tensors = shared.dora_round_trip(cache, "flux1", transformer_out, tmp_path)
    qkv = "lora_unet_single_blocks_0_linear1"
    assert tensors[f"{qkv}.dora_scale"].shape == (1, 32)  # kohya: one per input column
    assert tensors[f"{qkv}.lora_up.weight"].shape == (3 * 32 + 128, 4)  # trained fused


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_trains_end_to_end_on_tiny_flux(method: str, tmp_path: Path, cache: Path) -> None:
    shared.assert_trains_end_to_end("flux1", method, tmp_path, cache)


def test_flux_refuses_what_it_cannot_do_in_one_line() -> None:
    ok = config()
    check_architecture(ok, "flux1")
    cases = {"cannot train embeddings": config(method="embedding")}
    shared.assert_refused_in_one_line("flux1", cases | shared.common_refusals("flux1"))
    check_architecture(config(method="embedding", min_snr_gamma=5.0), "sd1")


def test_train_and_generate_clis_on_tiny_flux(cache: Path, tmp_path: Path, monkeypatch) -> None:
    """`atelier train --base-model tiny-flux` then `atelier generate --base tiny-flux`."""
    shared.assert_train_and_generate_clis("flux1", cache, tmp_path, monkeypatch)
