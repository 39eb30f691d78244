"""FLUX.1 from one BFL-layout transformer file with a diffusers FLUX.1 folder beside it.

The file is tiny-flux's transformer written in BFL's original key layout (as `flux1-dev.safetensors`
ships): the inverse of diffusers' `convert_flux_transformer_checkpoint_to_diffusers`, written
here from that function's mapping. Loading it through our loader must give the folder-loaded
transformer exactly.

diffusers' converter hard-codes FLUX.1's width (`inner_dim = 3072`, split of the single blocks'
`linear1`), so for the tiny model the test runs diffusers' own converter with that one number
replaced by the tiny width (as `tiny_width_converter` in test_flux.py does for LoRA files).
"""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import pytest
import torch

from tests.trainer import transformer_helpers as shared
from tests.trainer.test_flux import transformer_out as flux_out
from trainer.base_models import BaseModelError, detect_architecture, load_base_model

EMBEDDERS = {
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "context_embedder": "txt_in",
    "x_embedder": "img_in",
    "proj_out": "final_layer.linear",
}
DOUBLE = {
    "norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin",
    "attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj",
    "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2",
}  # fmt: skip
DOUBLE_NORMS = {
    "attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
    "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm",
}  # fmt: skip
SINGLE = {"norm.linear": "modulation.lin", "proj_out": "linear2"}
SINGLE_NORMS = {"attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm"}


def to_bfl(state: dict[str, torch.Tensor], doubles: int, singles: int) -> dict[str, torch.Tensor]:
    """diffusers FluxTransformer2DModel keys → BFL's; every diffusers tensor is used once."""
    src = dict(state)
    out: dict[str, torch.Tensor] = {}

    def move(old: str, new: str) -> None:
        for suffix in ("weight", "bias"):
            out[f"{new}.{suffix}"] = src.pop(f"{old}.{suffix}")

    def fuse(olds: list[str], new: str) -> None:
        for suffix in ("weight", "bias"):
            out[f"{new}.{suffix}"] = torch.cat([src.pop(f"{o}.{suffix}") for o in olds])

    for old, new in EMBEDDERS.items():
        move(old, new)
    for i in range(doubles):
        d, b = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for old, new in DOUBLE.items():
            move(d + old, b + new)
        for old, new in DOUBLE_NORMS.items():
            out[f"{b}{new}.scale"] = src.pop(f"{d}{old}.weight")
        fuse([d + f"attn.to_{x}" for x in "qkv"], b + "img_attn.qkv")
        fuse([d + f"attn.add_{x}_proj" for x in "qkv"], b + "txt_attn.qkv")
    for i in range(singles):
        s, b = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for old, new in SINGLE.items():
            move(s + old, b + new)
        for old, new in SINGLE_NORMS.items():
            out[f"{b}{new}.scale"] = src.pop(f"{s}{old}.weight")
        fuse([s + "attn.to_q", s + "attn.to_k", s + "attn.to_v", s + "proj_mlp"], b + "linear1")
    for suffix in ("weight", "bias"):  # BFL keeps (shift, scale), diffusers (scale, shift)
        scale, shift = src.pop(f"norm_out.linear.{suffix}").chunk(2)
        out[f"final_layer.adaLN_modulation.1.{suffix}"] = torch.cat([shift, scale])
    assert not src, f"diffusers keys not mapped: {sorted(src)}"
    return out


def tiny_width_flux_converter(inner: int):
    """diffusers' BFL → diffusers transformer converter with `inner_dim` set to `inner`."""
    from diffusers.loaders import single_file_utils

    source = inspect.getsource(single_file_utils.convert_flux_transformer_checkpoint_to_diffusers)
    assert source.count("inner_dim = 3072") == 1
    namespace = dict(vars(single_file_utils))
    exec(compile(source.replace("inner_dim = 3072", f"inner_dim = {inner}"), "<flux>", "exec"),
         namespace)  # fmt: skip
    return namespace["convert_flux_transformer_checkpoint_to_diffusers"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-flux-sf")


def bfl_file(cache: Path, where: Path) -> Path:
    """`where/flux-tiny.safetensors` (BFL layout) and `where/flux-tiny/` (a diffusers FLUX.1
    folder whose transformer has its config only: the weights must come from the file)."""
    transformer = shared.fresh(cache, "flux1").denoiser
    state = to_bfl(
        transformer.state_dict(),
        len(transformer.transformer_blocks),
        len(transformer.single_transformer_blocks),
    )
    return shared.single_file_beside_folder(cache, "flux1", state, where / "flux-tiny.safetensors")


def test_bfl_single_file_loads_as_the_folder(cache: Path, tmp_path: Path, monkeypatch) -> None:
    from diffusers.loaders import single_file_model

    checkpoint = bfl_file(cache, tmp_path)
    folder = shared.fresh(cache, "flux1")
    inner = folder.denoiser.config.num_attention_heads * folder.denoiser.config.attention_head_dim
    entry = dict(single_file_model.SINGLE_FILE_LOADABLE_CLASSES["FluxTransformer2DModel"])
    entry["checkpoint_mapping_fn"] = tiny_width_flux_converter(inner)
    monkeypatch.setitem(
        single_file_model.SINGLE_FILE_LOADABLE_CLASSES, "FluxTransformer2DModel", entry
    )
    assert detect_architecture(checkpoint) == "flux1"
    shared.assert_loads_as_the_folder(cache, "flux1", checkpoint, folder, flux_out)


def test_single_file_without_the_other_components_is_refused(cache: Path, tmp_path: Path) -> None:
    checkpoint = bfl_file(cache, tmp_path)
    shutil.rmtree(tmp_path / "flux-tiny" / "text_encoder_2")
    with pytest.raises(BaseModelError, match="text_encoder_2") as refused:
        load_base_model(str(checkpoint), "flux1", cache_dir=cache)
    assert "\n" not in str(refused.value)


def test_a_file_diffusers_cannot_convert_is_refused_in_one_line(
    cache: Path, tmp_path: Path
) -> None:
    """Unpatched, diffusers' converter splits `linear1` at FLUX.1's widths: the tiny file is a
    FLUX-layout file of another width, which must be one clear line, not a torch traceback."""
    checkpoint = bfl_file(cache, tmp_path)
    with pytest.raises(BaseModelError, match=r"not a FLUX\.1 transformer") as refused:
        load_base_model(str(checkpoint), "flux1", cache_dir=cache)
    assert "\n" not in str(refused.value)
