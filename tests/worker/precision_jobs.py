"""A queue of LoRA jobs that differ only in precision, for the tests of one worker running them
in turn (`tests/worker/test_precision_jobs.py`, and on CUDA `tests/gpu/test_gpu_lane.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from atelier.settings import AtelierSettings, load_settings
from storage import jobs
from storage.datasets import record_dataset
from storage.db import make_engine, session_scope
from storage.ingest import IngestOptions, ingest_zip
from storage.migrate import upgrade
from storage.models import Job
from tests.datasets import write_dataset_zip
from trainer.presets import apply_preset


def worker_database(tmp_path: Path, device: str) -> tuple[AtelierSettings, Engine]:
    """Settings for a worker on `device` (fast heartbeat) and its migrated SQLite database."""
    settings = load_settings(
        data_dir=tmp_path / "data", worker={"heartbeat_seconds": 0.5, "device": device}
    )
    engine = make_engine(settings.db_url)
    upgrade(engine)
    return settings, engine


def enqueue_precision_jobs(
    settings: AtelierSettings,
    engine: Engine,
    tmp_path: Path,
    precisions: list[str],
    **options: Any,
) -> list[int]:
    """One `quick-test` LoRA job per precision (named after it, `options` on top of the preset)
    on one small ingested dataset; their ids in queue order."""
    zip_path = write_dataset_zip(tmp_path / "data.zip", count=4, size=64)
    result = ingest_zip(
        zip_path, settings.datasets_dir, IngestOptions(trigger="tkxw"), settings.limits
    )
    ids = []
    with session_scope(engine) as session:
        dataset = record_dataset(session, result)
        for precision in precisions:
            config = apply_preset(
                "quick-test", "lora", trigger="tkxw", mixed_precision=precision, **options
            )
            job = jobs.enqueue(
                session,
                Job(owner_id=1, name=precision, method="lora", base_model="tiny",
                    dataset_id=dataset.id, config=config.model_dump(mode="json")),
            )  # fmt: skip
            ids.append(job.id)
    return ids
