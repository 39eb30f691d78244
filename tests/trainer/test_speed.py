"""Speed changes that must not change what a step computes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from tests.trainer.train_helpers import _one_thread, model_cache
from trainer.base_models import load_base_model
from trainer.speed import apply_attention_kernel, keep_freed_memory, uses_matmul_attention

__all__ = ["_one_thread", "model_cache"]
ROOT = Path(__file__).resolve().parents[2]


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


FAULTS = """
import resource, sys, torch
from trainer.speed import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory(torch.device("cpu"))
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):
    torch.ones(12 << 20)
before = faults()
for _ in range(10):
    torch.ones(12 << 20)  # 48 MiB, freed at once: above glibc's own mmap threshold cap
print(faults() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_cpu_job_keeps_freed_activations_instead_of_faulting_fresh_pages():
    """Without `keep_freed_memory` every freed 48 MiB block goes back to the kernel and comes
    back as 12 288 fresh-page faults; with it the block is reused (a step's activations are)."""

    def faults(mode: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True,
            cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        return int(done.stdout.split()[-1])

    block = (48 << 20) // 4096  # pages in one block
    assert faults("default") > 8 * block  # every one of the 10
    assert faults("keep") < 2 * block  # at most the heap growing once


def test_freed_memory_is_kept_only_for_cpu_jobs():
    assert not keep_freed_memory(torch.device("meta"))


def test_matmul_attention_only_where_measured_faster():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert uses_matmul_attention(cpu, torch.bfloat16)
    assert not uses_matmul_attention(cpu, torch.float32)  # the flash kernel wins in fp32
    assert not uses_matmul_attention(cpu, torch.float16)  # not measured
    assert not uses_matmul_attention(cuda, torch.bfloat16)
