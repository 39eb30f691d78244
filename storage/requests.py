"""Render requests the worker takes between training jobs (generations, iterations, comparisons):
each is a row with a `state` of queued → running → done | failed."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from storage.db import session_scope
from storage.events import emit

T = TypeVar("T")


def claim_oldest(engine: Engine, table: type[T], worker_id: str) -> T | None:
    """Take the oldest queued row (a conditional update, so two workers never share one)."""
    model: Any = table
    while True:
        with session_scope(engine) as session:
            candidate = session.exec(
                select(model.id).where(model.state == "queued").order_by(col(model.id))
            ).first()
            if candidate is None:
                return None
            taken = session.exec(  # type: ignore[call-overload]
                update(model)
                .where(col(model.id) == candidate, col(model.state) == "queued")
                .values(state="running", worker_id=worker_id)
            )
            if taken.rowcount == 1:
                return session.get(table, candidate)


def mark_failed(
    session: Session, row: Any, kind: str, reason: str, job_id: int | None = None
) -> None:
    """Record why a render request failed, and tell its member through the outbox (one event
    `kind` with `<table>_id`, `channel_id`, `user_id` and `reason`)."""
    row.state, row.error = "failed", reason
    emit(
        session,
        kind,
        job_id,
        **{f"{row.__tablename__}_id": row.id},
        channel_id=row.channel_id,
        user_id=row.user_id,
        reason=reason,
    )
