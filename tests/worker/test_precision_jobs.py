"""One long-lived worker runs jobs of different precisions one after another."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from sqlmodel import select

from atelier.settings import load_settings
from storage import jobs
from storage.datasets import record_dataset
from storage.db import make_engine, session_scope
from storage.ingest import IngestOptions, ingest_zip
from storage.migrate import upgrade
from storage.models import Checkpoint, Job
from storage.states import JobState
from tests.datasets import write_dataset_zip
from trainer import loop
from trainer.presets import apply_preset
from trainer.worker import Worker

pytestmark = pytest.mark.slow


def _enqueue_all(settings, engine, tmp_path: Path, precisions: list[str]) -> list[int]:
    zip_path = write_dataset_zip(tmp_path / "data.zip", count=4, size=64)
    result = ingest_zip(
        zip_path, settings.datasets_dir, IngestOptions(trigger="tkxw"), settings.limits
    )
    ids = []
    with session_scope(engine) as session:
        dataset = record_dataset(session, result)
        for precision in precisions:
            config = apply_preset(
                "quick-test", "lora", trigger="tkxw", steps=2, checkpoint_every=2,
                resolution=32, mixed_precision=precision, validation={"steps": 1},
            )  # fmt: skip
            job = jobs.enqueue(
                session,
                Job(owner_id=1, name=precision, method="lora", base_model="tiny",
                    dataset_id=dataset.id, config=config.model_dump(mode="json")),
            )  # fmt: skip
            ids.append(job.id)
    return ids


def test_one_worker_runs_a_bf16_then_an_fp16_then_an_fp32_job(tmp_path, monkeypatch):
    settings = load_settings(
        data_dir=tmp_path / "data", worker={"heartbeat_seconds": 0.5, "device": "cpu"}
    )
    engine = make_engine(settings.db_url)
    upgrade(engine)
    used: list[str] = []
    make = loop.make_precision

    def recording(requested, device):
        precision = make(requested, device)
        used.append(precision.mixed_precision)
        return precision

    monkeypatch.setattr(loop, "make_precision", recording)
    precisions = ["bf16", "fp16", "no"]
    ids = _enqueue_all(settings, engine, tmp_path, precisions)
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
