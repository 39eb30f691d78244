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


ARENA = """
import ctypes, sys, torch
from trainer.speed import keep_freed_memory
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "keep":
    assert keep_freed_memory(torch.device("cpu"))
block = torch.ones(12 << 20)  # 48 MiB: above glibc's own mmap threshold cap (32 MiB)
held = libc.mallinfo2()
del block
freed = libc.mallinfo2()
print(held.hblkhd, freed.fordblks)
"""
"""Where a freed 48 MiB activation goes: glibc's own statistics (`mallinfo2`, glibc 2.33+) of
bytes in mmapped blocks while it is held, and of free bytes kept in the heap after it is freed.
(Counting page faults instead is not reliable here: the kernel may reclaim idle kept pages.)"""


def _has_mallinfo2() -> bool:
    import ctypes

    try:
        return hasattr(ctypes.CDLL(None), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not _has_mallinfo2(), reason="glibc malloc settings"
)
def test_cpu_job_keeps_freed_activations_for_the_next_step():
    """Without `keep_freed_memory` a 48 MiB block is mmapped and given back to the kernel when
    freed (the next step faults it in again page by page: ~5000 faults a step on the mid
    benchmark model); with it the block comes from the heap and stays there, free for reuse."""

    def arena(mode: str) -> tuple[int, int]:
        done = subprocess.run(
            [sys.executable, "-c", ARENA, mode], capture_output=True, text=True, check=True,
            cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        mapped, kept = done.stdout.split()[-2:]
        return int(mapped), int(kept)

    block = 48 << 20
    mapped, kept = arena("default")
    assert mapped >= block and kept < block  # its own mapping, unmapped when freed
    mapped, kept = arena("keep")
    assert mapped < block and kept >= block  # from the heap, and kept there once freed


def test_freed_memory_is_kept_only_for_cpu_jobs():
    assert not keep_freed_memory(torch.device("meta"))


def test_matmul_attention_only_where_measured_faster():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert uses_matmul_attention(cpu, torch.bfloat16)
    assert not uses_matmul_attention(cpu, torch.float32)  # the flash kernel wins in fp32
    assert not uses_matmul_attention(cpu, torch.float16)  # not measured
    assert not uses_matmul_attention(cuda, torch.bfloat16)
