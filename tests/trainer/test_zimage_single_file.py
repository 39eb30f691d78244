"""Z-Image from one ComfyUI-layout transformer file with a diffusers Z-Image folder beside it.

The file is tiny-zimage's transformer written in the layout ComfyUI ships
(`z_image_turbo_bf16.safetensors`: fused `attention.qkv`, `attention.out`, `q_norm`/`k_norm`,
`x_embedder.` / `final_layer.`): the inverse of diffusers' (0.42.1)
`convert_z_image_transformer_checkpoint_to_diffusers`, written here from that function's mapping.
That converter hard-codes no width, so diffusers' own converter runs unpatched.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from atelier.doctor import model_folder_problem
from tests.trainer import transformer_helpers as shared
from tests.trainer.test_zimage import transformer_out
from trainer.base_models import BaseModelError, detect_architecture, load_base_model

RENAMES = {
    "all_final_layer.2-1.": "final_layer.",
    "all_x_embedder.2-1.": "x_embedder.",
    ".attention.to_out.0.": ".attention.out.",
    ".attention.norm_q.weight": ".attention.q_norm.weight",
    ".attention.norm_k.weight": ".attention.k_norm.weight",
}


def to_comfy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ZImageTransformer2DModel keys → ComfyUI's; every diffusers tensor is used once."""
    src = dict(state)
    out: dict[str, torch.Tensor] = {}
    for key in [k for k in src if k.endswith(".attention.to_q.weight")]:
        stem = key.removesuffix("to_q.weight")
        out[stem + "qkv.weight"] = torch.cat([src.pop(f"{stem}to_{x}.weight") for x in "qkv"])
    for key in list(src):
        new = key
        for old, comfy in RENAMES.items():
            new = new.replace(old, comfy)
        out[new] = src.pop(key)
    assert not any(".to_k." in k or ".to_v." in k for k in out), "unfused attention weights"
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-zimage-sf")


def comfy_file(cache: Path, where: Path) -> Path:
    """`where/zimage-tiny.safetensors` (ComfyUI layout) and `where/zimage-tiny/` (a diffusers
    Z-Image folder whose transformer has its config only: the weights must come from the file)."""
    state = to_comfy(shared.fresh(cache, "zimage").denoiser.state_dict())
    checkpoint = where / "zimage-tiny.safetensors"
    return shared.single_file_beside_folder(cache, "zimage", state, checkpoint)


def test_comfy_single_file_loads_as_the_folder(cache: Path, tmp_path: Path) -> None:
    checkpoint = comfy_file(cache, tmp_path)
    folder = shared.fresh(cache, "zimage")
    assert detect_architecture(checkpoint) == "zimage"
    assert model_folder_problem(checkpoint, "zimage") is None
    shared.assert_loads_as_the_folder(cache, "zimage", checkpoint, folder, transformer_out)


def test_missing_config_folder_is_refused_in_one_line(cache: Path, tmp_path: Path) -> None:
    checkpoint = comfy_file(cache, tmp_path)
    shutil.rmtree(tmp_path / "zimage-tiny")
    with pytest.raises(BaseModelError, match="config folder") as refused:
        load_base_model(str(checkpoint), "zimage", cache_dir=cache)
    assert "\n" not in str(refused.value)
    problem = model_folder_problem(checkpoint, "zimage")
    assert problem is not None and "zimage-tiny/" in problem[0]
    assert "VAE and text encoders" in problem[1]


def test_config_folder_without_the_text_encoder_is_refused(cache: Path, tmp_path: Path) -> None:
    checkpoint = comfy_file(cache, tmp_path)
    shutil.rmtree(tmp_path / "zimage-tiny" / "text_encoder")
    with pytest.raises(BaseModelError, match=r"Z-Image transformer only.*text_encoder/") as refused:
        load_base_model(str(checkpoint), "zimage", cache_dir=cache)
    assert "\n" not in str(refused.value)
