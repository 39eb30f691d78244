"""Options do what they say: gradient checkpointing, text-encoder lr, 8-bit AdamW, Prodigy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.trainer.train_helpers import _one_thread, make_dataset, model_cache, tiny_config
from trainer import adapters, loop
from trainer.checkpointing import latest_state

__all__ = ["_one_thread", "model_cache"]
pytestmark = pytest.mark.slow


def _train(tmp_path: Path, model_cache: Path, **overrides) -> tuple[dict, dict]:
    """Train (2 steps by default); return the saved optimizer state and adapter tensors."""
    dataset = make_dataset(tmp_path / "data", count=2, size=32)
    values = {"steps": 2, "checkpoint_every": 2, "resolution": 32, **overrides}
    config = tiny_config(**values)
    result = loop.train(config, dataset, tmp_path / "out", cache_dir=model_cache, device="cpu")
    assert result.status == "completed"
    state = latest_state(tmp_path / "out")
    return (
        torch.load(state / "optimizer.pt", weights_only=True),
        torch.load(state / "adapter.pt", weights_only=True),
    )


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradient_checkpointing_recomputes_unet_blocks(
    checkpointing, tmp_path, model_cache, monkeypatch
):
    """With checkpointing each UNet block starts again in the backward pass (a pre-hook: the
    recompute stops early, once it has what the backward needs, so a forward hook may not run)."""
    calls: list[bool] = []
    inject = adapters.inject_adapter

    def spy(model, config):
        block = model.unet.up_blocks[1].resnets[0]
        block.register_forward_pre_hook(lambda *_: calls.append(torch.is_grad_enabled()))
        return inject(model, config)

    monkeypatch.setattr(adapters, "inject_adapter", spy)
    _train(tmp_path, model_cache, gradient_checkpointing=checkpointing)
    assert calls.count(True) == (4 if checkpointing else 2), "2 steps: 1 or 2 runs per step"


def test_text_encoder_trains_in_its_own_group_at_text_encoder_lr(tmp_path, model_cache):
    optimizer, adapter = _train(
        tmp_path, model_cache, train_text_encoder=True, learning_rate=1e-3, text_encoder_lr=3e-4
    )
    assert [group["lr"] for group in optimizer["param_groups"]] == [1e-3, 3e-4]
    text_up = [v for k, v in adapter.items() if k.startswith("text_encoder.") and "lora_B" in k]
    assert text_up and all(v.abs().sum() > 0 for v in text_up), "the text encoder's LoRA moved"
    unet_params = len(optimizer["param_groups"][0]["params"])
    assert unet_params == sum(1 for k in adapter if k.startswith("unet."))


def test_text_encoder_lr_without_training_the_text_encoder_is_refused():
    with pytest.raises(ValueError, match="text_encoder_lr needs train_text_encoder"):
        tiny_config(text_encoder_lr=1e-4)


def test_8bit_adamw_trains_on_cpu(tmp_path, model_cache):
    """bitsandbytes' AdamW8bit with its CPU backend: rank 128 makes LoRA matrices of 4096
    values, the size from which bitsandbytes keeps the moments in 8 bits (uint8 + absmax)."""
    optimizer, adapter = _train(tmp_path, model_cache, optimizer="adamw8bit", rank=128)
    states = [s["__bnb_optimizer_quant_state__"] for s in optimizer["state"].values()]
    assert states and all("exp_avg" not in s for s in optimizer["state"].values())
    assert any(s["state1"].dtype == torch.uint8 and "absmax1" in s for s in states)
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)


def test_prodigy_trains(tmp_path, model_cache):
    """Prodigy's own state (its step-size estimate d and the sums behind it) is what was saved."""
    optimizer, adapter = _train(tmp_path, model_cache, optimizer="prodigy", learning_rate=1.0)
    group = optimizer["param_groups"][0]
    assert {"d", "d0", "d_numerator"} <= group.keys() and group["d"] >= group["d0"] > 0
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
