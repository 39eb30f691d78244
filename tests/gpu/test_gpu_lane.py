"""The GPU lane: the whole job path on CUDA in bf16 and fp16, and one worker running both.

Runs when CUDA is present (`pytest -m gpu`), skips otherwise. `ATELIER_GPU_LANE_DEVICE=cpu`
runs the same tests on the CPU, to check the lane itself on a machine without a GPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from sqlmodel import select

from storage.db import session_scope
from storage.models import Checkpoint, Job
from storage.states import JobState
from tests.trainer.train_helpers import make_dataset, tiny_config
from tests.worker.precision_jobs import enqueue_precision_jobs, worker_database
from trainer import loop
from trainer.base_models import load_base_model
from trainer.generate import load_for_generation, render
from trainer.worker import Worker

DEVICE = os.environ.get("ATELIER_GPU_LANE_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU"
    ),
]
PRECISIONS = ["bf16", "fp16"]


def _dtypes(path: Path) -> set[torch.dtype]:
    with safe_open(str(path), framework="pt") as handle:
        return {handle.get_tensor(key).dtype for key in handle.keys()}  # noqa: SIM118


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("method", ["lora", "dora", "embedding"])
def test_job_path_train_checkpoint_grid_export_reload(method, precision, tmp_path):
    """train → checkpoints (held-out loss, grid, fp32 files) → the file loads into an fp16
    pipeline, as a member generating with it would, and draws a finite image."""
    dataset = make_dataset(tmp_path / "data", count=10, size=64)
    config = tiny_config(
        method=method, steps=6, checkpoint_every=3, mixed_precision=precision,
        optimizer="adamw8bit" if method == "lora" else "adamw",
    )  # fmt: skip
    cache = tmp_path / "cache"
    result = loop.train(config, dataset, tmp_path / "out", cache_dir=cache, device=DEVICE)
    assert result.status == "completed" and result.nan_skipped == 0
    assert [c.step for c in result.checkpoints] == [3, 6]
    for checkpoint in result.checkpoints:
        assert checkpoint.grid_path.is_file() and checkpoint.heldout_loss is not None
        assert _dtypes(checkpoint.file) == {torch.float32}
    assert result.comparison_grid and result.comparison_grid.is_file()

    base = load_base_model(
        "builtin:tiny", "sd1", cache_dir=cache, device=DEVICE, dtype=torch.float16
    )
    pipeline = load_for_generation(base, result.checkpoints[-1].file, 1.0)
    image = render(pipeline, "ohwx", seed=1, steps=2, width=64, height=64, scheduler="euler")
    assert image.size == (64, 64) and image.getextrema() != ((0, 0), (0, 0), (0, 0))


def test_one_worker_runs_a_bf16_then_an_fp16_job(tmp_path):
    settings, engine = worker_database(tmp_path, DEVICE)
    ids = enqueue_precision_jobs(
        settings, engine, tmp_path, PRECISIONS, steps=4, checkpoint_every=2
    )
    worker = Worker(settings, engine, "gpu-lane")
    assert worker.run_once() and worker.run_once()
    with session_scope(engine) as session:
        for job_id in ids:
            job = session.get(Job, job_id)
            assert job.state == JobState.AWAITING_VOTE, (job.name, job.error)
            rows = session.exec(select(Checkpoint).where(Checkpoint.job_id == job_id)).all()
            assert [c.step for c in rows] == [2, 4]
            assert all(Path(c.grid_path).is_file() for c in rows)
