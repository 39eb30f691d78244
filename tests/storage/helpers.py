"""Small builders for storage tests."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from storage.db import session_scope
from storage.jobs import enqueue
from storage.models import Dataset, Job


def make_dataset(engine: Engine, dataset_id: str = "ds1") -> str:
    with session_scope(engine) as session:
        if session.get(Dataset, dataset_id) is None:
            session.add(Dataset(id=dataset_id, path=f"/tmp/{dataset_id}", images=3))
    return dataset_id


def make_jobs(engine: Engine, owners: list[int], dataset_id: str = "ds1") -> list[int]:
    """Enqueue one job per entry of `owners`, in order; returns their ids."""
    make_dataset(engine, dataset_id)
    ids: list[int] = []
    with session_scope(engine) as session:
        for owner in owners:
            job = enqueue(
                session,
                Job(
                    owner_id=owner,
                    name=f"job-{owner}",
                    method="lora",
                    base_model="tiny",
                    dataset_id=dataset_id,
                    config={"steps": 10},
                ),
            )
            ids.append(job.id)  # type: ignore[arg-type]
    return ids
