"""`quantize_base`: the frozen tiny-flux transformer in int8 / nf4 (bitsandbytes, on the CPU here),
a peft LoRA on top that trains, and files identical in layout to an unquantised run's."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from tests.trainer.test_flux import config, fresh, perturbed, tiny_width_converter
from tests.trainer.test_flux import transformer_out as flux_out
from tests.trainer.train_helpers import make_dataset
from tests.trainer.transformer_helpers import lora_layers
from trainer import loop
from trainer.base_models import load_base_model
from trainer.callbacks import RecordingCallbacks
from trainer.config import ArchitectureMismatch, TrainConfig, check_architecture
from trainer.export import export_checkpoint, read_safetensors
from trainer.quantize import quantize_linears

bnb = pytest.importorskip("bitsandbytes")
KINDS = {"int8": (bnb.nn.Linear8bitLt, torch.int8), "nf4": (bnb.nn.Linear4bit, torch.uint8)}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-flux-q")


def block_bytes(transformer: torch.nn.Module) -> int:
    blocks = (*transformer.transformer_blocks, *transformer.single_transformer_blocks)
    return sum(p.numel() * p.element_size() for b in blocks for p in b.parameters())


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_blocks_are_quantised_and_close_to_the_base(kind: str, cache: Path) -> None:
    layer_cls, storage = KINDS[kind]
    base = fresh(cache)
    quant = load_base_model("builtin:tiny-flux", "flux1", cache_dir=cache, quantize=kind)
    blocks = (*quant.denoiser.transformer_blocks, *quant.denoiser.single_transformer_blocks)
    linears = [m for b in blocks for m in b.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, layer_cls) for m in linears)
    assert all(m.weight.dtype == storage for m in linears)
    assert block_bytes(quant.denoiser) * 2.5 < block_bytes(base.denoiser)
    want, got = flux_out(base), flux_out(quant)
    error = (got - want).norm() / want.norm()
    assert 0 < error < 0.2, error  # quantised (not equal), yet the same model


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_a_layer_trains_after_sampling(kind: str) -> None:
    """Real-width layers (input a multiple of bitsandbytes' 64-wide blocks, which tiny-flux's
    are not): a no-grad eval forward (a validation grid), then a training step through it."""
    torch.manual_seed(0)
    root = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(128, 64)))
    plain = torch.nn.Linear(128, 64)
    plain.load_state_dict(root[0][0].state_dict())
    assert quantize_linears(root, ("0",), kind, torch.device("cpu"), torch.float32) == 1
    root.eval()
    with torch.no_grad():
        root(torch.randn(3, 128))
    root.train()
    leaf = torch.randn(3, 128, requires_grad=True)
    out = root(leaf * 1)
    out.sum().backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0
    error = (out - plain(leaf)).norm() / plain(leaf).norm()
    assert 0 < error < 0.2


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_lora_trains_on_a_quantised_base_and_exports_the_usual_file(
    kind: str, cache: Path, tmp_path: Path, monkeypatch, caplog
) -> None:
    from diffusers.loaders import lora_pipeline

    dataset = make_dataset(tmp_path / "data", count=10, size=48)
    cfg = config(quantize_base=kind, steps=4, checkpoint_every=2, batch_size=2, learning_rate=1e-3)
    result = loop.train(
        cfg, dataset, tmp_path / "out", RecordingCallbacks(), cache_dir=cache, device="cpu"
    )
    assert result.status == "completed"
    trained, _ = read_safetensors(result.checkpoints[-1].file)
    ups = [v for k, v in trained.items() if k.endswith("lora_up.weight")]
    assert ups and all(v.abs().sum() > 0 for v in ups)  # B starts at zero: the LoRA learned

    plain_cfg = config()
    plain = perturbed(cache, plain_cfg)
    reference, _ = read_safetensors(export_checkpoint(plain, plain_cfg, tmp_path, 1, "r").primary)
    assert {k: v.shape for k, v in trained.items()} == {k: v.shape for k, v in reference.items()}

    other = fresh(cache)  # an unquantised base, as a member's app loads it
    base = flux_out(other)
    converter = tiny_width_converter(other.denoiser)
    monkeypatch.setattr(lora_pipeline, "_convert_kohya_flux_lora_to_diffusers", converter)
    with caplog.at_level(logging.WARNING, logger="diffusers"):
        other.pipeline.load_lora_weights(str(result.checkpoints[-1].file), adapter_name="q")
    assert not [r for r in caplog.records if "state_dict led to" in r.getMessage()]
    assert lora_layers(other.denoiser, "q") == lora_layers(plain.denoiser, "default")
    assert not torch.allclose(flux_out(other), base, atol=1e-6)


def test_zimage_lora_trains_on_an_nf4_base(tmp_path: Path, cache: Path) -> None:
    """The other transformer: its layers and refiners quantised, a LoRA trained and exported."""
    from tests.trainer.test_zimage import config as zimage_config

    quant = load_base_model("builtin:tiny-zimage", "zimage", cache_dir=cache, quantize="nf4")
    blocks = [getattr(quant.denoiser, name) for name in quant.arch.quantized_blocks]
    linears = [m for b in blocks for m in b.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, bnb.nn.Linear4bit) for m in linears)
    dataset = make_dataset(tmp_path / "data", count=10, size=48)
    cfg = zimage_config(quantize_base="nf4", steps=2, checkpoint_every=2, learning_rate=1e-3)
    result = loop.train(cfg, dataset, tmp_path / "out", cache_dir=cache, device="cpu")
    assert result.status == "completed"
    trained, _ = read_safetensors(result.checkpoints[-1].file)
    ups = [v for k, v in trained.items() if k.endswith("lora_up.weight")]
    assert ups and all(v.abs().sum() > 0 for v in ups)


def test_the_option_keeps_earlier_runs_resumable_and_changes_the_run_hash() -> None:
    import hashlib
    import json

    from trainer.checkpointing import config_hash

    cfg = config()
    added_later = {"quantize_base", "pivotal", "pivotal_lr", "pivotal_until"}
    dumped = cfg.model_dump(
        mode="json", exclude={"output_dir", "dataset", "validation", "keep_last", *added_later}
    )
    del dumped["preservation"]["unconditional"]  # added later too; off with preservation
    before = hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()[:16]
    assert config_hash(cfg) == before  # a state saved before the option existed still resumes
    assert config_hash(config(quantize_base="nf4")) != before
    kept = {"enabled": True}
    assert config_hash(config(preservation={**kept, "unconditional": 0.2})) != config_hash(
        config(preservation={**kept, "unconditional": 0.1})
    )


def test_quantize_base_is_refused_in_one_line_where_it_cannot_work() -> None:
    with pytest.raises(ValidationError, match="LoRA only") as refused:
        config(method="dora", quantize_base="nf4")
    assert "\n" not in str(refused.value.errors()[0]["msg"])
    with pytest.raises(ValidationError):
        config(quantize_base="fp8")
    sd = TrainConfig(base_model="tiny", quantize_base="int8", steps=10, checkpoint_every=5)
    for arch in ("sd1", "sdxl"):
        with pytest.raises(ArchitectureMismatch, match="quantize_base") as mismatch:
            check_architecture(sd, arch)
        assert "\n" not in str(mismatch.value)
    check_architecture(config(quantize_base="nf4"), "flux1")
