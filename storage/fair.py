"""One fair order for all worker time: training jobs and render requests (`/generate`,
`/iterate start`, `/compare`) wait in the same round-robin between members.

A member's n-th waiting item (oldest first, whatever its kind) ranks n, plus one for each item
of theirs a worker already runs; ties go to the oldest. So one member's ten renders do not
starve another member's training job, and renders no longer always run before training.
Pure SQL that runs on SQLite and PostgreSQL; the claimers lock what they take.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import bindparam, text
from sqlmodel import Session

KINDS = ("job", "generation", "iteration", "comparison")
"""The tables worker time is queued in (a job's owner is `owner_id`, a request's `user_id`)."""

RUNNING = {"job": "state IN ('preparing', 'training')"}
"""What counts as running for a job; render requests are 'running'."""
RENDER_RUNNING = "state = 'running'"

_MEMBER = {"job": "owner_id"}


def _member(kind: str) -> str:
    return _MEMBER.get(kind, "user_id")


def _waiting(kinds: Collection[str]) -> str:
    return " UNION ALL ".join(
        f"SELECT '{kind}' AS kind, id, {_member(kind)} AS member, created_at "
        f"FROM {kind} WHERE state = 'queued'"
        for kind in KINDS
        if kind in kinds
    )


def _busy() -> str:
    return " UNION ALL ".join(
        f"SELECT {_member(kind)} AS member FROM {kind} WHERE {RUNNING.get(kind, RENDER_RUNNING)}"
        for kind in KINDS
    )


def ranked(
    session: Session, kinds: Collection[str] = KINDS, limit: int = 20
) -> list[tuple[str, int]]:
    """The first `limit` waiting items of `kinds`, fairest first, as (kind, id)."""
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"unknown kinds of worker time: {sorted(unknown) or 'none'}")
    sql = f"""
        WITH waiting AS ({_waiting(kinds)}),
        busy AS ({_busy()}),
        ranked AS (
            SELECT kind, id, member, created_at,
                   ROW_NUMBER() OVER (PARTITION BY member ORDER BY created_at, id) AS member_rank
            FROM waiting
        )
        SELECT kind, id FROM ranked
        ORDER BY member_rank + (SELECT COUNT(*) FROM busy WHERE busy.member = ranked.member),
                 created_at, id
        LIMIT :limit
    """
    statement = text(sql).bindparams(bindparam("limit", limit))
    rows = session.connection().execute(statement).all()
    return [(str(kind), int(row_id)) for kind, row_id in rows]
