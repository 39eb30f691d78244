"""Lineage: dataset versions, child jobs with one changed setting, and how a model came about."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from storage.db import session_scope
from storage.models import (
    Dataset,
    DatasetLineage,
    Job,
    JobChange,
)

ORIGINAL_CONTEXT = "original"


# --- dataset lineage -------------------------------------------------------------------------


def dataset_version(session: Session, dataset_id: str) -> int:
    """1 for an uploaded dataset, parent's version + 1 for one made by curation."""
    lineage = session.get(DatasetLineage, dataset_id)
    return lineage.version if lineage else 1


def newest_dataset(session: Session, dataset_id: str) -> Dataset:
    """The newest dataset version descending from `dataset_id` (itself when none)."""
    current = session.get(Dataset, dataset_id)
    assert current is not None
    while True:
        child = session.exec(
            select(DatasetLineage)
            .where(DatasetLineage.parent_id == current.id)
            .order_by(col(DatasetLineage.created_at).desc())
        ).first()
        if child is None:
            return current
        found = session.get(Dataset, child.dataset_id)
        if found is None:
            return current
        current = found


def context_spread(session: Session, dataset_id: str) -> dict[str, int]:
    """How many images of each context a dataset holds (uploaded images count as original)."""
    spread: Counter[str] = Counter()
    dataset = session.get(Dataset, dataset_id)
    lineage = session.get(DatasetLineage, dataset_id)
    total = dataset.images if dataset else 0
    added = 0
    while lineage is not None:
        for item in lineage.added:
            spread[item.get("context") or ORIGINAL_CONTEXT] += 1
            added += 1
        lineage = session.get(DatasetLineage, lineage.parent_id)
    spread[ORIGINAL_CONTEXT] += max(0, total - added)
    return dict(spread.most_common())


# --- child jobs ------------------------------------------------------------------------------


def enqueue_child(
    session: Session, parent: Job, child: Job, setting: str | None, old: Any, new: Any
) -> Job:
    """Queue `child` as the next version of `parent`, recording the one setting it changed."""
    from storage import jobs

    child.parent_job_id = parent.id
    jobs.enqueue(session, child)
    session.add(
        JobChange(
            job_id=child.id,
            setting=setting,  # type: ignore[arg-type]
            old_value=None if setting is None else json.dumps(old),
            new_value=None if setting is None else json.dumps(new),
            dataset_id=child.dataset_id,
        )
    )
    session.flush()
    return child


def lineage(engine: Engine, job_id: int) -> dict[str, Any]:
    """What `/job status` and `/models list` show: parents, dataset version, the change."""
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        if job is None:
            return {}
        parents: list[int] = []
        current = job
        while current.parent_job_id and len(parents) < 20:
            parents.append(current.parent_job_id)
            found = session.get(Job, current.parent_job_id)
            if found is None:
                break
            current = found
        change = session.get(JobChange, job_id)
        return {
            "parents": parents,
            "dataset_id": job.dataset_id,
            "dataset_version": dataset_version(session, job.dataset_id),
            "setting": change.setting if change else None,
            "old": json.loads(change.old_value) if change and change.old_value else None,
            "new": json.loads(change.new_value) if change and change.new_value else None,
        }


def lineage_text(info: dict[str, Any]) -> str:
    """One line: `from #3 ← #1 · dataset v2 · changed rank 4 → 16`."""
    if not info:
        return ""
    parts = []
    if info.get("parents"):
        parts.append("from " + " ← ".join(f"#{p}" for p in info["parents"]))
    parts.append(f"dataset v{info.get('dataset_version', 1)} `{str(info['dataset_id'])[:8]}`")
    if info.get("setting"):
        parts.append(f"changed {info['setting']} {info['old']} → {info['new']}")
    elif info.get("parents"):
        parts.append("same settings")
    return " · ".join(parts)
