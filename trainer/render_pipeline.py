"""The pieces a worker's renders share (`/generate` in `trainer.worker`, `/iterate` and
`/compare` in `trainer.iterate`): which device, the base model with a trained file applied,
and a member-readable sentence for a crash. Imports neither the worker nor the database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.settings import TrainerSettings
    from trainer.warm_base import WarmBase


def resolve_device(setting: str) -> str:
    """'auto' → cuda when visible, else cpu."""
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def describe_crash(error: BaseException) -> str:
    """A sentence a member understands for an unexpected error."""
    text = str(error).lower()
    if "out of memory" in text:
        return "the GPU ran out of memory; try a smaller batch size or resolution"
    if isinstance(error, FileNotFoundError):
        return f"a file the job needs is missing: {Path(str(error.filename)).name}"
    return (
        f"an internal error stopped training ({type(error).__name__}); an operator can see the log"
    )


@contextmanager
def render_pipeline(
    settings: TrainerSettings, base_model: str, model_file: Path, weight: float, warm: WarmBase
) -> Iterator[Any]:
    """The job's base model (resolved through the operator's catalogue) on the worker's device,
    with `model_file` applied at `weight`, for the length of the block.

    The base comes from the worker's `warm` cache (one base per worker, loaded once); the file is
    applied to a view of it that shares its weights, so the warm base itself never changes
    (`trainer.warm_base`)."""
    from trainer.base_models import load_base_model, resolve_base_model
    from trainer.generate import load_for_generation

    if not Path(model_file).is_file():
        raise FileNotFoundError(2, "model file missing", str(model_file))
    path, architecture = resolve_base_model(base_model, settings)
    device = resolve_device(settings.worker.device)
    key = (str(path), architecture, device, "float32")
    with warm.checkout(
        key,
        lambda: load_base_model(path, architecture, cache_dir=settings.cache_dir, device=device),
    ) as base:
        yield load_for_generation(base, Path(model_file), weight)
