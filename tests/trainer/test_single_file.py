"""`load_base_model` on a single-file (original LDM layout) SD-1 checkpoint, offline.

The tiny SD-1 model is re-keyed to the A1111 / ComfyUI layout, saved as one `.safetensors`
with a local diffusers config folder beside it, loaded through `from_single_file`, and must
compute exactly what the diffusers-folder load computes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.trainer.ldm_layout import TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX, pipeline_to_ldm
from trainer.base_models import BaseModelError, load_base_model
from trainer.tiny_model import ensure_tiny_model

pytestmark = pytest.mark.slow

ATOL = 1e-5


def _write_checkpoint(cache_dir: Path, target_dir: Path) -> tuple[Path, Path]:
    from safetensors.torch import save_file

    folder = ensure_tiny_model(cache_dir, "sd1")
    reference = load_base_model(str(folder), "sd1", cache_dir=cache_dir)
    state = pipeline_to_ldm(reference.pipeline)
    target_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = target_dir / "tiny-sd1.safetensors"
    save_file(state, str(checkpoint))
    return folder, checkpoint


def _copy_configs(folder: Path, dest: Path) -> None:
    """The diffusers folder without its weights: configs, tokenizer files, model_index.json."""
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))


def test_layout_has_original_prefixes(tmp_path: Path) -> None:
    folder = ensure_tiny_model(tmp_path / "cache", "sd1")
    reference = load_base_model(str(folder), "sd1", cache_dir=tmp_path / "cache")
    state = pipeline_to_ldm(reference.pipeline)
    sizes = {
        prefix: sum(1 for key in state if key.startswith(prefix))
        for prefix in (UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX)
    }
    assert sum(sizes.values()) + 2 == len(state)  # + betas, alphas_cumprod
    assert sizes[UNET_PREFIX] == len(reference.unet.state_dict())
    assert sizes[VAE_PREFIX] == len(reference.vae.state_dict())
    assert f"{UNET_PREFIX}input_blocks.0.0.weight" in state
    assert f"{UNET_PREFIX}middle_block.1.proj_in.weight" in state
    assert f"{VAE_PREFIX}decoder.mid.attn_1.q.weight" in state
    assert f"{TEXT_PREFIX}text_model.final_layer_norm.weight" in state


def test_single_file_checkpoint_matches_diffusers_folder(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    folder, checkpoint = _write_checkpoint(cache_dir, tmp_path / "models")
    _copy_configs(folder, checkpoint.with_suffix(".config"))

    reference = load_base_model(str(folder), "sd1", cache_dir=cache_dir)
    loaded = load_base_model(str(checkpoint), "sd1", cache_dir=cache_dir)

    # every weight arrived (a missed key would be left at its random init)
    for name, ref_module, got_module in (
        ("unet", reference.unet, loaded.unet),
        ("vae", reference.vae, loaded.vae),
        ("text_encoder", reference.text_encoders[0], loaded.text_encoders[0]),
    ):
        ref_state, got_state = ref_module.state_dict(), got_module.state_dict()
        assert set(got_state) == set(ref_state), name
        for key, value in ref_state.items():
            assert torch.equal(got_state[key], value), f"{name}: {key}"

    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 16, 16, generator=generator)
    timesteps = torch.tensor([10, 500])
    ids = torch.randint(0, len(reference.tokenizers[0]), (2, 12), generator=generator)

    with torch.no_grad():
        ref_text = reference.text_encoders[0](ids)[0]
        got_text = loaded.text_encoders[0](ids)[0]
        assert torch.allclose(got_text, ref_text, atol=ATOL)

        ref_noise = reference.unet(latents, timesteps, encoder_hidden_states=ref_text).sample
        got_noise = loaded.unet(latents, timesteps, encoder_hidden_states=ref_text).sample
        assert torch.allclose(got_noise, ref_noise, atol=ATOL)

        ref_image = reference.vae.decode(latents).sample
        got_image = loaded.vae.decode(latents).sample
        assert torch.allclose(got_image, ref_image, atol=ATOL)

    assert loaded.prediction_type == reference.prediction_type
    assert loaded.vae.config.scaling_factor == reference.vae.config.scaling_factor


def test_explicit_and_stem_config_folders(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    folder, checkpoint = _write_checkpoint(cache_dir, tmp_path / "models")
    explicit = tmp_path / "elsewhere" / "configs"
    _copy_configs(folder, explicit)
    loaded = load_base_model(
        str(checkpoint), "sd1", cache_dir=cache_dir, single_file_config=explicit
    )
    assert list(loaded.unet.config.block_out_channels) == [32, 64]

    _copy_configs(folder, checkpoint.with_suffix(""))  # `<stem>/` next to the file
    loaded = load_base_model(str(checkpoint), "sd1", cache_dir=cache_dir)
    assert list(loaded.vae.config.block_out_channels) == [32, 64]


def test_single_file_without_config_folder_is_a_clear_error(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    _folder, checkpoint = _write_checkpoint(cache_dir, tmp_path / "models")
    with pytest.raises(BaseModelError, match="needs a local diffusers config folder"):
        load_base_model(str(checkpoint), "sd1", cache_dir=cache_dir)
    with pytest.raises(BaseModelError, match="config folder"):
        load_base_model(
            str(checkpoint), "sd1", cache_dir=cache_dir, single_file_config=tmp_path / "missing"
        )
