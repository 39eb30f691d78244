"""State folders: durable (fsync before rename), code-free to load, and skipped when damaged."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from tests.trainer.train_helpers import _one_thread, make_dataset, model_cache, tiny_config
from trainer import checkpointing, loop
from trainer.callbacks import RecordingCallbacks
from trainer.checkpointing import TrainState, list_states, newest_readable_state, save_state

__all__ = ["_one_thread", "model_cache"]


def _parts() -> tuple[dict[str, torch.Tensor], torch.optim.Optimizer, object]:
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    weight.grad = torch.ones(3)
    optimizer.step()
    scheduler.step()
    return {"w": weight.detach()}, optimizer, scheduler


def _save(out: Path, step: int) -> Path:
    adapter, optimizer, scheduler = _parts()
    return save_state(out, TrainState(step=step, micro_index=step), adapter, optimizer, scheduler)


def test_every_state_file_is_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src, dst, *args, **kwargs):
        events.append(("rename", str(dst)))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", rename)
    monkeypatch.setattr(os, "rename", rename)
    final = _save(tmp_path, 2)
    renamed = events.index(("rename", str(final)))
    synced_before = {Path(path).name for kind, path in events[:renamed] if kind == "fsync"}
    assert {p.name for p in final.iterdir()} <= synced_before
    assert "meta.json" in synced_before and "optimizer.pt" in synced_before
    assert ("fsync", str(final.parent)) in events[renamed:]


def test_scheduler_and_rng_are_not_pickles_and_nothing_loads_unsafely(tmp_path, monkeypatch):
    final = _save(tmp_path, 2)
    names = {p.name for p in final.iterdir()}
    assert {"scheduler.json", "rng.safetensors", "rng.json"} <= names
    assert not names & {"scheduler.pt", "rng.pt"}
    real_load = torch.load
    calls: list[object] = []

    def guarded_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        assert kwargs.get("weights_only") is True, "torch.load without weights_only=True"
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", guarded_load)
    _adapter, optimizer, scheduler = _parts()
    checkpointing.load_state(final, optimizer, scheduler)
    assert calls and all(calls)


def test_rng_state_round_trips(tmp_path):
    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    final = _save(tmp_path, 1)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    _adapter, optimizer, scheduler = _parts()
    checkpointing.load_state(final, optimizer, scheduler)
    torch.testing.assert_close(torch.rand(3), expected[0])
    np.testing.assert_array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_legacy_pickled_state_loads_with_weights_only(tmp_path):
    """States written before this format (scheduler.pt / rng.pt) still resume, safely."""
    final = _save(tmp_path, 1)
    _adapter, _optimizer, scheduler = _parts()
    torch.save(scheduler.state_dict(), final / "scheduler.pt")
    torch.save(checkpointing.rng_state(), final / "rng.pt")
    for name in ("scheduler.json", "rng.safetensors", "rng.json"):
        (final / name).unlink()
    saved = checkpointing.read_state(final)
    assert saved.scheduler["last_epoch"] == scheduler.state_dict()["last_epoch"]


def test_a_state_that_does_not_load_is_skipped_for_the_one_before(tmp_path, caplog):
    _save(tmp_path, 2)
    newest = _save(tmp_path, 4)
    (newest / "optimizer.pt").write_bytes(b"")  # what a power cut before the fsync leaves
    with caplog.at_level(logging.WARNING, logger="trainer.checkpointing"):
        saved = newest_readable_state(tmp_path)
    assert saved is not None and saved.meta.step == 2
    assert "step-00000004 does not load" in caplog.text


def test_training_resumes_from_the_previous_state_when_the_newest_is_damaged(tmp_path, model_cache):
    dataset = make_dataset(tmp_path / "data", count=2, size=32)
    config = tiny_config(steps=6, checkpoint_every=2, resolution=32)
    out = tmp_path / "out"
    stopped = loop.train(
        config, dataset, out, RecordingCallbacks(stop_at=5), cache_dir=model_cache, device="cpu"
    )
    assert stopped.status == "cancelled"
    assert [p.name for p in list_states(out)][-1] == "step-00000004"
    (list_states(out)[-1] / "rng.safetensors").write_bytes(b"\0" * 10)
    result = loop.train(config, dataset, out, cache_dir=model_cache, device="cpu")
    assert result.status == "completed" and result.resumed_from == 2
