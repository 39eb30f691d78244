"""Dataset rows: recording an ingest result, finding datasets by id or name."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, select

from storage.models import Dataset


def record_dataset(
    session: Session,
    result: Any,
    *,
    guild_id: int | None = None,
    name: str | None = None,
    created_by: int | None = None,
) -> Dataset:
    """Insert (or reuse) the row for an `IngestResult`; the same content gives the same row."""
    existing = session.get(Dataset, result.dataset_id)
    if existing is not None:
        return existing
    summary = result.to_json()
    dataset = Dataset(
        id=result.dataset_id,
        guild_id=guild_id,
        name=name,
        path=str(result.path),
        images=int(summary["images"]),
        created_by=created_by,
        report=summary,
    )
    session.add(dataset)
    session.flush()
    return dataset


def find_dataset(session: Session, guild_id: int | None, name: str) -> Dataset | None:
    return session.exec(
        select(Dataset).where(Dataset.guild_id == guild_id, Dataset.name == name)
    ).first()
