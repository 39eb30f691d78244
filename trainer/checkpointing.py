"""The full training state for resume: written atomically, found newest-first, pruned to keep_last.

A state folder `output_dir/state/step-00000020/` holds the adapter tensors, optimizer and
lr-scheduler state, the RNG states of torch / numpy / python, and `meta.json` (step, data-order
position, NaN counter, loss history, checkpoints so far, config hash). It is written into a
temporary sibling whose files are fsynced before it is renamed into place (and the parent folder
after), so neither a SIGKILL nor a power cut leaves a folder that looks complete but is not;
`meta.json` is written last inside it and is what marks a folder complete.

Nothing here unpickles: tensors are loaded with `weights_only=True`, the lr-scheduler state is
JSON and the RNG states are a safetensors file plus JSON (a writable data folder must not mean
code execution). On resume a state that does not load is skipped for the one before it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from storage.fsutil import TEMP_MARK, durable_replace
from trainer.config import TrainConfig

log = logging.getLogger(__name__)

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
    if data.get("quantize_base") == "none":  # added later: runs saved before it still resume
        del data["quantize_base"]
    if not data.get("pivotal"):  # added later, as quantize_base
        data.pop("pivotal", None)
        data.pop("pivotal_lr", None)
        data.pop("pivotal_until", None)
    if not data["preservation"]["enabled"]:  # added later, as quantize_base
        data["preservation"].pop("unconditional", None)
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


def _write_rng(folder: Path, state: dict[str, Any]) -> None:
    """Torch / CUDA generator states as tensors, numpy's and python's as JSON numbers."""
    tensors = {"torch": state["torch"]}
    for index, cuda in enumerate(state.get("cuda", [])):
        tensors[f"cuda.{index}"] = cuda
    save_file(tensors, str(folder / "rng.safetensors"))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    version, internal, gauss_next = state["python"]
    plain = {
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss_next],
    }
    (folder / "rng.json").write_text(json.dumps(plain), encoding="utf-8")


def _read_rng(folder: Path) -> dict[str, Any]:
    tensors = load_file(str(folder / "rng.safetensors"))
    plain = json.loads((folder / "rng.json").read_text(encoding="utf-8"))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    version, internal, gauss_next = plain["python"]
    state: dict[str, Any] = {
        "torch": tensors["torch"],
        "numpy": (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached),
        "python": (version, tuple(internal), gauss_next),
    }
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors) - 1) if f"cuda.{i}" in tensors]
    if cuda:
        state["cuda"] = cuda
    return state


def _read_legacy_rng(path: Path) -> dict[str, Any]:
    """`rng.pt` of states written before the JSON format, still without unpickling code: only
    numpy's array reconstruction is allowed besides tensors and plain types."""
    from numpy._core.multiarray import _reconstruct

    allowed = [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


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
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", suffix=TEMP_MARK, dir=final.parent))
    try:
        torch.save({k: v.detach().cpu() for k, v in adapter.items()}, tmp / "adapter.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "scheduler.json").write_text(json.dumps(lr_scheduler.state_dict()), encoding="utf-8")
        _write_rng(tmp, rng_state())
        (tmp / "meta.json").write_text(json.dumps(state.__dict__, indent=1), encoding="utf-8")
        if final.exists():  # a previous attempt at this very step (resumed after it)
            shutil.rmtree(final)
        durable_replace(tmp, final)  # fsync every file and the folder, rename, fsync the parent
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


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


@dataclass
class SavedState:
    """Everything one state folder holds, read into memory (nothing applied yet)."""

    path: Path
    meta: TrainState
    adapter: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]


def read_state(path: Path) -> SavedState:
    """Read and check a whole state folder; raises if any part is missing or damaged."""
    meta = read_meta(path)
    adapter = torch.load(path / "adapter.pt", map_location="cpu", weights_only=True)
    optimizer = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    if (path / "scheduler.json").is_file():
        scheduler = json.loads((path / "scheduler.json").read_text(encoding="utf-8"))
        rng = _read_rng(path)
    else:  # written by an older Atelier
        scheduler = torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True)
        rng = _read_legacy_rng(path / "rng.pt")
    return SavedState(path, meta, adapter, optimizer, scheduler, rng)


def newest_readable_state(output_dir: Path) -> SavedState | None:
    """The newest state that reads back whole; damaged ones (a power cut before an fsync, a
    full disk) are skipped for the one before, with a log line each."""
    for path in reversed(list_states(output_dir)):
        try:
            return read_state(path)
        except Exception as error:  # any damage means: not this one
            log.warning(
                "state %s does not load (%s: %s); trying the one before",
                path,
                type(error).__name__,
                str(error).splitlines()[0][:200] if str(error) else "",
            )
    return None


def apply_state(saved: SavedState, optimizer: Any, lr_scheduler: Any) -> None:
    """Restore optimizer, scheduler and RNG in place from a state read by `read_state`."""
    optimizer.load_state_dict(saved.optimizer)
    lr_scheduler.load_state_dict(saved.scheduler)
    set_rng_state(saved.rng)


def load_state(
    path: Path, optimizer: Any, lr_scheduler: Any
) -> tuple[TrainState, dict[str, torch.Tensor]]:
    """Restore optimizer, scheduler and RNG in place; return the meta and the adapter tensors."""
    saved = read_state(path)
    apply_state(saved, optimizer, lr_scheduler)
    return saved.meta, saved.adapter


def prune_states(output_dir: Path, keep_last: int | None) -> list[Path]:
    """Delete all but the newest `keep_last` states (None keeps all); also stale temp folders."""
    root = Path(output_dir) / STATE_DIR
    removed: list[Path] = []
    if root.is_dir():
        for path in root.glob(f".{_PREFIX}*"):  # temp folders of interrupted saves
            shutil.rmtree(path, ignore_errors=True)
    if keep_last is None:
        return removed
    for path in list_states(output_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
