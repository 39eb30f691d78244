"""A model trained by the worker on a catalogue base model says the catalogue name and a hash
in its metadata, never the server's path to the base model."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import select

from atelier.settings import load_settings
from storage import jobs
from storage.base_models import fingerprint
from storage.datasets import record_dataset
from storage.db import make_engine, session_scope
from storage.ingest import IngestOptions, ingest_zip
from storage.migrate import upgrade
from storage.models import Checkpoint, Job
from tests.datasets import write_dataset_zip
from trainer.export import read_safetensors
from trainer.presets import apply_preset
from trainer.tiny_model import ensure_tiny_model
from trainer.worker import Worker

pytestmark = pytest.mark.slow


def test_metadata_carries_the_catalogue_name_and_hash_not_the_path(tmp_path: Path) -> None:
    folder = ensure_tiny_model(tmp_path / "models", "sd1")  # a local diffusers folder
    settings = load_settings(
        data_dir=tmp_path / "data",
        base_models={"house": {"path": str(folder), "architecture": "sd1"}},
        worker={"heartbeat_seconds": 0.2, "stale_after_seconds": 30, "device": "cpu"},
    )
    engine = make_engine(settings.db_url)
    upgrade(engine)
    result = ingest_zip(
        write_dataset_zip(tmp_path / "d.zip", count=2, size=64),
        settings.datasets_dir,
        IngestOptions(trigger="tkxw"),
        settings.limits,
    )
    config = apply_preset(
        "quick-test", "lora", trigger="tkxw", base_model="house", steps=2, checkpoint_every=2
    )
    with session_scope(engine) as session:
        dataset = record_dataset(session, result)
        job = Job(owner_id=1, name="t", method="lora", base_model="house", dataset_id=dataset.id,
                  config=config.model_dump(mode="json"))  # fmt: skip
        job_id = jobs.enqueue(session, job).id
    assert Worker(settings, engine, "w1").run_once()
    with session_scope(engine) as session:
        checkpoint = session.exec(select(Checkpoint).where(Checkpoint.job_id == job_id)).first()
    assert checkpoint is not None
    _tensors, metadata = read_safetensors(Path(checkpoint.path))
    assert metadata["ss_sd_model_name"] == "house"
    assert metadata["ss_sd_model_hash"] == fingerprint(str(folder))
    assert "house" in metadata["modelspec.description"]
    leaked = [key for key, value in metadata.items() if str(tmp_path) in value]
    assert not leaked, leaked
