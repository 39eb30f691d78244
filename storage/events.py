"""The event outbox: what happened to a job, in order, until the bot has said it in Discord.

Delivery is idempotent. The bot posts each event's message with the nonce `event_nonce(event)`
and `enforce_nonce`, so a retry after a crash between posting and marking returns the message
Discord already has instead of posting a second copy; and it records the message id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from storage.db import session_scope
from storage.models import Event, utcnow


class EventKind:
    """Names of the events the worker and the bot write."""

    QUEUED = "queued"
    STARTED = "started"
    PROGRESS = "progress"
    CHECKPOINT = "checkpoint_ready"
    TRAINING_DONE = "training_done"
    FINALIZED = "finalized"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REQUEUED = "requeued"
    GENERATED = "generated"


def emit(session: Session, kind: str, job_id: int | None, **payload: Any) -> Event:
    """Add an event to the session's transaction (so it commits with the change it reports)."""
    event = Event(kind=kind, job_id=job_id, payload=payload)
    session.add(event)
    return event


def pending(engine: Engine, limit: int = 100) -> Sequence[Event]:
    """Undelivered events, oldest first."""
    with session_scope(engine) as session:
        query = select(Event).where(col(Event.delivered_at).is_(None)).order_by(col(Event.id))
        return session.exec(query.limit(limit)).all()


def mark_attempted(engine: Engine, event_id: int) -> None:
    """Record that a post is about to be made (a retry then knows to reuse the nonce)."""
    with session_scope(engine) as session:
        event = session.get(Event, event_id)
        if event is not None and event.attempted_at is None:
            event.attempted_at = utcnow()


def record_failed_try(engine: Engine, event_id: int) -> int:
    """Count one more failed try to say an event, in the database (so the outbox's bound on
    tries holds across restarts); returns the count so far."""
    with session_scope(engine) as session:
        event = session.get(Event, event_id)
        if event is None:
            return 0
        event.tries = (event.tries or 0) + 1
        session.add(event)
        return event.tries


def mark_delivered(engine: Engine, event_id: int, message_id: int | None) -> None:
    """Mark an event said, with the Discord message that said it (None: nothing to post)."""
    with session_scope(engine) as session:
        event = session.get(Event, event_id)
        if event is not None:
            event.delivered_at = utcnow()
            event.message_id = message_id


def event_nonce(event: Event) -> str:
    """A Discord message nonce (≤ 25 chars) unique to this event."""
    return f"atelier-ev-{event.id}"


POSTED = "posted"
"""Payload key: the ids of an event's secondary messages (report, announcement, pages), by
suffix, so a retry after a crash reuses them instead of posting again."""


def posted_ids(event: Event) -> dict[str, int]:
    return {str(k): int(v) for k, v in (event.payload.get(POSTED) or {}).items()}


def record_posted(engine: Engine, event_id: int, suffix: str, message_id: int) -> None:
    """Remember that the event's secondary message `suffix` is `message_id`."""
    with session_scope(engine) as session:
        event = session.get(Event, event_id)
        if event is not None:
            ids = {**(event.payload.get(POSTED) or {}), suffix: message_id}
            event.payload = {**event.payload, POSTED: ids}  # a new dict: JSON columns
            session.add(event)
