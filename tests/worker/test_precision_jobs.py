"""One long-lived worker runs jobs of different precisions one after another."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from sqlmodel import select

from storage.db import session_scope
from storage.models import Checkpoint, Job
from storage.states import JobState
from tests.worker.precision_jobs import enqueue_precision_jobs, worker_database
from trainer import loop
from trainer.worker import Worker

pytestmark = pytest.mark.slow


def test_one_worker_runs_a_bf16_then_an_fp16_then_an_fp32_job(tmp_path, monkeypatch):
    settings, engine = worker_database(tmp_path, "cpu")
    used: list[str] = []
    make = loop.make_precision

    def recording(requested, device):
        precision = make(requested, device)
        used.append(precision.mixed_precision)
        return precision

    monkeypatch.setattr(loop, "make_precision", recording)
    precisions = ["bf16", "fp16", "no"]
    ids = enqueue_precision_jobs(
        settings, engine, tmp_path, precisions,
        steps=2, checkpoint_every=2, resolution=32, validation={"steps": 1},
    )  # fmt: skip
    worker = Worker(settings, engine, "w1")
    for _ in precisions:
        assert worker.run_once()
    assert used == precisions
    with session_scope(engine) as session:
        for job_id in ids:
            job = session.get(Job, job_id)
            assert job.state == JobState.AWAITING_VOTE, (job.name, job.error)
            (checkpoint,) = session.exec(select(Checkpoint).where(Checkpoint.job_id == job_id))
            assert Path(checkpoint.grid_path).is_file()
            with safe_open(checkpoint.path, framework="pt") as handle:
                assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.float32}  # noqa: SIM118
