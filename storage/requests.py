"""Render requests the worker takes in the fair order (`storage.fair`) with training jobs:
generations, iterations and comparisons. Each is a row with a `state` of queued → running →
done | failed (an iteration's rendered state is `voting`).

Like jobs, a running request has a lease: the worker that claimed it, its attempt number and a
heartbeat. A request whose worker stops beating is queued again (`requeue_stale`), up to
`MAX_RENDER_ATTEMPTS` claims; then it fails and its member is told. A worker writes a result
only while its lease (name and attempt) is still the request's current one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from storage.db import session_scope
from storage.events import emit
from storage.fair import ranked
from storage.models import Checkpoint, Comparison, Generation, Iteration, utcnow

T = TypeVar("T")

RENDER_MODELS: dict[str, Any] = {
    "generation": Generation,
    "iteration": Iteration,
    "comparison": Comparison,
}
FAILED_KIND = {
    "generation": "generation_failed",
    "iteration": "iteration_failed",
    "comparison": "comparison_failed",
}
"""The outbox event that tells a member their request failed (see `mark_failed`)."""

MAX_RENDER_ATTEMPTS = 3
"""Claims a render request gets before a lost worker fails it for good."""

WAITING_OR_RUNNING = ("queued", "running")


@dataclass(frozen=True)
class Lease:
    """Which claim of a request a worker holds: its name and the request's attempt then."""

    worker_id: str
    attempt: int


class RenderQuotaReached(Exception):
    """A member has as many render requests queued or running as they may; `str()` says so."""


def lease_of(row: Any) -> Lease:
    return Lease(str(row.worker_id), int(row.attempts))


def holds(row: Any, lease: Lease | None) -> bool:
    """Whether `lease` is still the row's current claim (None: no check, tools and tests)."""
    if lease is None:
        return True
    return (
        row.state == "running"
        and row.worker_id == lease.worker_id
        and row.attempts == lease.attempt
    )


def take(session: Session, table: type[T], row_id: int, worker_id: str) -> T | None:
    """Claim one queued row in the session's transaction, or None when another worker took it
    (PostgreSQL: rows another claimer is locking are skipped; SQLite: claims are serialized)."""
    model: Any = table
    query = (
        select(model)
        .where(col(model.id) == row_id, col(model.state) == "queued")
        .with_for_update(skip_locked=True)
    )
    row = session.exec(query).first()
    if row is None:
        return None
    now = utcnow()
    row.state, row.worker_id = "running", worker_id
    row.attempts += 1
    row.claimed_at = row.heartbeat_at = now
    session.add(row)
    return row  # type: ignore[no-any-return]


def claim_oldest(engine: Engine, table: type[T], worker_id: str) -> T | None:
    """Take the fairest queued row of one table (used when only that kind is wanted)."""
    kind = table.__tablename__  # type: ignore[attr-defined]
    with session_scope(engine) as session:
        for _kind, row_id in ranked(session, (kind,)):
            row = take(session, table, row_id, worker_id)
            if row is not None:
                return row
    return None


def beat(engine: Engine, kind: str, row_id: int, lease: Lease) -> bool:
    """Record that the lease's worker is alive on the request; False when it lost it."""
    with session_scope(engine) as session:
        row = session.get(RENDER_MODELS[kind], row_id)
        if row is None or not holds(row, lease):
            return False
        row.heartbeat_at = utcnow()
        session.add(row)
        return True


def requeue_stale(
    engine: Engine, stale_after: timedelta, now: datetime | None = None
) -> list[tuple[str, int, str]]:
    """Queue again the running requests whose worker stopped beating; fail (and tell the
    member) those that used up `MAX_RENDER_ATTEMPTS`. Returns (kind, id, 'requeued'|'failed')."""
    cutoff = (now or utcnow()) - stale_after
    done: list[tuple[str, int, str]] = []
    with session_scope(engine) as session:
        for kind, model in RENDER_MODELS.items():
            query = select(model).where(
                col(model.state) == "running", col(model.heartbeat_at) < cutoff
            )
            for row in session.exec(query).all():
                if row.attempts >= MAX_RENDER_ATTEMPTS:
                    reason = (
                        f"the worker rendering it stopped {row.attempts} times; "
                        "an operator can see the workers' logs"
                    )
                    mark_failed(session, row, FAILED_KIND[kind], reason, _job_of(session, row))
                    done.append((kind, row.id, "failed"))
                else:
                    row.state, row.worker_id = "queued", None
                    done.append((kind, row.id, "requeued"))
                session.add(row)
    return done


def _job_of(session: Session, row: Any) -> int | None:
    """The job a failure event names: a generation's model's job (as `fail_generation` does);
    iterations and comparisons route by their kind and name none."""
    if not isinstance(row, Generation):
        return None
    checkpoint = session.get(Checkpoint, row.checkpoint_id)
    return checkpoint.job_id if checkpoint else None


def active_renders_of(session: Session, guild_id: int | None, user_id: int) -> int:
    """How many render requests a member has queued or running (in one guild)."""
    total = 0
    for model in RENDER_MODELS.values():
        query = (
            select(func.count())
            .select_from(model)
            .where(col(model.user_id) == user_id, col(model.state).in_(WAITING_OR_RUNNING))
        )
        if guild_id is not None:
            query = query.where(col(model.guild_id) == guild_id)
        total += int(session.exec(query).one())
    return total


def check_render_quota(
    session: Session, guild_id: int | None, user_id: int, adding: int, limit: int
) -> None:
    """Refuse `adding` more render requests past the member's `limit` (checked in the
    transaction that adds them, so two commands at once cannot both pass)."""
    current = active_renders_of(session, guild_id, user_id)
    if current + adding > limit:
        raise RenderQuotaReached(
            f"You already have {current} render(s) queued or running and may have {limit}; "
            "wait for one to finish."
        )


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
