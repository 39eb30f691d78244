"""Speed changes that must not change what a step computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from tests.trainer.train_helpers import _one_thread, model_cache
from trainer.base_models import load_base_model
from trainer.speed import apply_attention_kernel

__all__ = ["_one_thread", "model_cache"]


@pytest.fixture(scope="module")
def unet_model(tmp_path_factory: pytest.TempPathFactory):
    return load_base_model("builtin:tiny", "sd1", cache_dir=tmp_path_factory.mktemp("tiny"))


def test_cpu_bf16_unet_attends_with_matmuls_and_computes_the_same(unet_model):
    """On CPU in bf16 the UNet's attention switches to diffusers' `AttnProcessor` (explicit
    matmuls, faster than torch's CPU flash kernel in bf16); fp32 keeps SDPA. Same prediction."""
    unet = unet_model.denoiser
    cpu = torch.device("cpu")
    assert not apply_attention_kernel(unet_model, cpu, torch.float32)
    assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())
    torch.manual_seed(0)
    x, t, text = torch.randn(2, 4, 16, 16), torch.tensor([10, 700]), torch.randn(2, 77, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        sdpa = unet(x, t, text).sample.float()
        assert apply_attention_kernel(unet_model, cpu, torch.bfloat16)
        assert all(isinstance(p, AttnProcessor) for p in unet.attn_processors.values())
        matmul = unet(x, t, text).sample.float()
    unet.set_attn_processor(AttnProcessor2_0())
    assert (matmul - sdpa).abs().max() < 0.05 * sdpa.abs().max()


def test_attention_kernel_leaves_transformers_alone(tmp_path: Path):
    """FLUX.1's transformer has its own processors: nothing is switched."""
    model = load_base_model("builtin:tiny-flux", "flux1", cache_dir=tmp_path)
    before = {k: type(v) for k, v in model.denoiser.attn_processors.items()}
    assert not apply_attention_kernel(model, torch.device("cpu"), torch.bfloat16)
    assert {k: type(v) for k, v in model.denoiser.attn_processors.items()} == before
