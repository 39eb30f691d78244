"""Held-out split, held-out loss at each checkpoint, the overfitting signal, crop jitter."""

from __future__ import annotations

import math

import pytest
import torch

from tests.trainer.train_helpers import _one_thread, make_dataset, model_cache, tiny_config
from trainer import adapters, caches, loop
from trainer.callbacks import CheckpointInfo, RecordingCallbacks
from trainer.data import BatchOrder, load_dataset, load_pixels
from trainer.heldout import HeldoutSet, heldout_loss, overfitting_from

__all__ = ["_one_thread", "model_cache"]


def test_overfitting_fires_on_rising_heldout_loss_only():
    rising = [(100, 0.30, 0.20), (200, 0.25, 0.18), (300, 0.20, 0.19), (400, 0.15, 0.21)]
    assert overfitting_from(rising) == 200
    falling = [(100, 0.30, 0.20), (200, 0.25, 0.18), (300, 0.20, 0.17), (400, 0.15, 0.16)]
    assert overfitting_from(falling) is None
    once = [(100, 0.3, 0.2), (200, 0.2, 0.25), (300, 0.1, 0.24), (400, 0.05, 0.26)]
    assert overfitting_from(once) is None  # never two rises in a row
    both_rise = [(100, 0.1, 0.2), (200, 0.2, 0.3), (300, 0.3, 0.4)]
    assert overfitting_from(both_rise) is None  # training loss rose too: not overfitting
    gaps = [(100, 0.3, None), (200, 0.25, 0.18), (300, 0.2, 0.19), (400, 0.15, 0.2)]
    assert overfitting_from(gaps) == 200
    assert overfitting_from([(1, 0.1, math.nan)]) is None


def test_heldout_images_never_reach_a_training_batch(tmp_path):
    dataset = make_dataset(tmp_path / "data", count=20, size=32)
    split = load_dataset(dataset, tiny_config(resolution=32))
    held = {e.file for e in split.heldout}
    assert len(held) == 2 and len(split.train) == 18
    order = BatchOrder(split.train, 4, seed=3)
    seen = {split.train[i].file for m in range(order.batches_per_epoch * 3) for i in order.batch(m)}
    assert seen == {e.file for e in split.train} and not seen & held
    # another job on the same dataset (other seed, batch size) holds out the same images
    other = load_dataset(dataset, tiny_config(resolution=32, seed=9, batch_size=3))
    assert {e.file for e in other.heldout} == held
    assert load_dataset(dataset, tiny_config(resolution=32, heldout_fraction=0.0)).heldout == []
    wider = load_dataset(dataset, tiny_config(resolution=32, heldout_fraction=0.25))
    assert len(wider.heldout) == 5 and held <= {e.file for e in wider.heldout}


def test_heldout_loss_is_deterministic_for_the_same_weights(tmp_path, model_cache):
    dataset = make_dataset(tmp_path / "data", count=10, size=32)
    config = tiny_config(resolution=32)
    split = load_dataset(dataset, config)
    model = loop.load_model(config, model_cache, torch.device("cpu"), torch.float32, None)
    adapters.inject_adapter(model, config)
    captions = [e.caption for e in split.heldout]
    first = heldout_loss(model, HeldoutSet(model, split.heldout), captions)
    second = heldout_loss(model, HeldoutSet(model, split.heldout), captions)
    assert first is not None and math.isfinite(first) and first == second
    assert not model.unet.training  # evaluated in eval mode (and left as it was)
    with torch.no_grad():
        for name, param in model.unet.named_parameters():
            if "lora_B" in name:
                param.add_(0.05)
    assert heldout_loss(model, HeldoutSet(model, split.heldout), captions) != first
    assert heldout_loss(model, HeldoutSet(model, []), []) is None


def test_crop_jitter_bypasses_the_latent_cache_only(tmp_path, monkeypatch, model_cache):
    config = tiny_config(crop_jitter=0.1, resolution=32, steps=2, checkpoint_every=2)
    assert not config.uses_latent_cache and config.uses_text_cache
    assert tiny_config(flip=False).uses_latent_cache
    dataset = make_dataset(tmp_path / "data", count=3, size=48)
    example = load_dataset(dataset, config).train[0]
    plain = load_pixels(example)
    cropped = load_pixels(example, crop=(0.1, 0.0, 1.0))
    assert cropped.shape == plain.shape and not torch.equal(cropped, plain)

    def no_latent_cache(*args, **kwargs):
        raise AssertionError("the latent cache must not be used with crop jitter")

    texts = []
    real_text_cache = caches.text_cache

    def counting_text_cache(*args, **kwargs):
        texts.append(1)
        return real_text_cache(*args, **kwargs)

    monkeypatch.setattr(loop, "latent_cache", no_latent_cache)
    monkeypatch.setattr(loop, "text_cache", counting_text_cache)
    result = loop.train(config, dataset, tmp_path / "out", cache_dir=model_cache, device="cpu")
    assert result.status == "completed" and texts == [1]


def test_checkpoints_carry_heldout_loss_and_resume_keeps_the_history(tmp_path, model_cache):
    dataset = make_dataset(tmp_path / "data", count=10, size=32)
    config = tiny_config(steps=6, checkpoint_every=2, resolution=32, learning_rate=5e-3)
    straight = loop.train(
        config, dataset, tmp_path / "straight", cache_dir=model_cache, device="cpu"
    )
    history = straight.heldout_losses
    assert [step for step, _ in history] == [2, 4, 6]
    assert all(math.isfinite(loss) for _, loss in history)
    assert [c.heldout_loss for c in straight.checkpoints] == [loss for _, loss in history]
    assert straight.loss_curve is not None and straight.loss_curve.is_file()
    summary = straight.to_json()
    assert summary["heldout_losses"] == [[s, v] for s, v in history]
    assert "overfit_after" in summary
    info = straight.checkpoints[0]
    assert CheckpointInfo.from_json(info.to_json()).heldout_loss == info.heldout_loss

    stopped = loop.train(
        config, dataset, tmp_path / "resumed", RecordingCallbacks(stop_at=3),
        cache_dir=model_cache, device="cpu",
    )  # fmt: skip
    assert stopped.status == "cancelled" and stopped.heldout_losses == history[:1]
    resumed = loop.train(config, dataset, tmp_path / "resumed", cache_dir=model_cache, device="cpu")
    assert resumed.resumed_from == 2
    assert [s for s, _ in resumed.heldout_losses] == [2, 4, 6]
    for (_, a), (_, b) in zip(resumed.heldout_losses, history, strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7)


def test_heldout_loss_under_the_training_precision_context(tmp_path, model_cache):
    """The loop passes accelerate's one-shot autocast(); several held-out images must work."""
    dataset = make_dataset(tmp_path / "data", count=20, size=32)
    config = tiny_config(resolution=32)
    split = load_dataset(dataset, config)
    assert len(split.heldout) == 2
    model = loop.load_model(config, model_cache, torch.device("cpu"), torch.float32, None)
    adapters.inject_adapter(model, config)
    captions = [e.caption for e in split.heldout]
    plain = heldout_loss(model, HeldoutSet(model, split.heldout), captions)
    accelerator = loop.make_accelerator(config, "cpu")
    under_context = heldout_loss(
        model, HeldoutSet(model, split.heldout), captions, accelerator.autocast()
    )
    assert under_context == pytest.approx(plain)
