"""The full training state for resume: written atomically, found newest-first, pruned to keep_last.

A state folder `output_dir/state/step-00000020/` holds the adapter tensors, optimizer and
lr-scheduler state, the RNG states of torch / numpy / python, and `meta.json` (step, data-order
position, NaN counter, loss history, checkpoints so far, config hash). It is written into a
temporary sibling and renamed into place, so a SIGKILL leaves either the whole state or none;
`meta.json` is written last inside it and is what marks a folder complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.config import TrainConfig

STATE_DIR = "state"
_PREFIX = "step-"


@dataclass
class TrainState:
    """What a resumed job needs besides the tensors."""

    step: int
    micro_index: int
    nan_in_a_row: int = 0
    nan_skipped: int = 0
    losses: list[float] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    config_hash: str = ""


def config_hash(config: TrainConfig) -> str:
    """Fingerprint of everything that changes the training trajectory (not cadence or prompts)."""
    data = config.model_dump(
        mode="json", exclude={"output_dir", "dataset", "validation", "keep_last"}
    )
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def state_dir(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / STATE_DIR / f"{_PREFIX}{step:08d}"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(
    output_dir: Path,
    state: TrainState,
    adapter: dict[str, torch.Tensor],
    optimizer: Any,
    lr_scheduler: Any,
) -> Path:
    """Write one complete state folder atomically (temp folder + rename) and return it."""
    final = state_dir(output_dir, state.step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        torch.save({k: v.detach().cpu() for k, v in adapter.items()}, tmp / "adapter.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(lr_scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "meta.json").write_text(json.dumps(state.__dict__, indent=1), encoding="utf-8")
        _fsync_dir(tmp)
        if final.exists():  # a previous attempt at this very step (resumed after it)
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(final.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def list_states(output_dir: Path) -> list[Path]:
    """Complete state folders, oldest first (temporary and half-written ones are ignored)."""
    root = Path(output_dir) / STATE_DIR
    if not root.is_dir():
        return []
    found = [
        path
        for path in root.iterdir()
        if path.name.startswith(_PREFIX) and (path / "meta.json").is_file()
    ]
    return sorted(found, key=lambda path: int(path.name.removeprefix(_PREFIX)))


def latest_state(output_dir: Path) -> Path | None:
    states = list_states(output_dir)
    return states[-1] if states else None


def read_meta(path: Path) -> TrainState:
    return TrainState(**json.loads((path / "meta.json").read_text(encoding="utf-8")))


def load_state(
    path: Path, optimizer: Any, lr_scheduler: Any
) -> tuple[TrainState, dict[str, torch.Tensor]]:
    """Restore optimizer, scheduler and RNG in place; return the meta and the adapter tensors."""
    adapter = torch.load(path / "adapter.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(
        torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    )
    lr_scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return read_meta(path), adapter


def prune_states(output_dir: Path, keep_last: int | None) -> list[Path]:
    """Delete all but the newest `keep_last` states (None keeps all); also stale temp folders."""
    root = Path(output_dir) / STATE_DIR
    removed: list[Path] = []
    if root.is_dir():
        for path in root.glob(f".{_PREFIX}*"):
            shutil.rmtree(path, ignore_errors=True)
    if keep_last is None:
        return removed
    for path in list_states(output_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
