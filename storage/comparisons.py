"""`/compare`: two finalized models rendered side by side, and the team's 🅰️/🅱️ votes."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, delete, select

from storage.db import session_scope
from storage.events import emit
from storage.iterations import (
    COMPARISON_FAILED,
    COMPARISON_RENDERED,
    IterationRefused,
    winner_of,
)
from storage.lineage import dataset_version
from storage.models import (
    Checkpoint,
    Comparison,
    ComparisonVote,
    Job,
)
from storage.requests import Lease, claim_oldest, holds, mark_failed

# --- comparisons -----------------------------------------------------------------------------


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, list[Any]]:
    """Settings that differ between two job configs (dotted keys; the dataset path aside)."""
    out: dict[str, list[Any]] = {}

    def walk(x: Any, y: Any, prefix: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for key in sorted(set(x) | set(y)):
                walk(x.get(key), y.get(key), f"{prefix}{key}.")
        elif x != y:
            out[prefix[:-1]] = [x, y]

    walk(
        {k: v for k, v in a.items() if k not in ("dataset", "output_dir")},
        {k: v for k, v in b.items() if k not in ("dataset", "output_dir")},
        "",
    )
    return out


def request_comparison(
    session: Session,
    *,
    guild_id: int | None,
    channel_id: int | None,
    user_id: int,
    job_a: int,
    job_b: int,
) -> Comparison:
    if job_a == job_b:
        raise IterationRefused("pick two different jobs")
    a, _ = winner_of(session, job_a)
    b, _ = winner_of(session, job_b)
    diff = config_diff(a.config, b.config)
    if a.dataset_id != b.dataset_id:
        diff["dataset"] = [
            f"v{dataset_version(session, a.dataset_id)}",
            f"v{dataset_version(session, b.dataset_id)}",
        ]
    comparison = Comparison(
        guild_id=guild_id,
        channel_id=channel_id,
        user_id=user_id,
        job_a=job_a,
        job_b=job_b,
        diff=diff,
    )
    session.add(comparison)
    session.flush()
    return comparison


def claim_comparison(engine: Engine, worker_id: str) -> Comparison | None:
    return claim_oldest(engine, Comparison, worker_id)


def comparison_inputs(
    engine: Engine, comparison_id: int
) -> tuple[Comparison, list[tuple[Job, Checkpoint]]]:
    with session_scope(engine) as session:
        comparison = session.get(Comparison, comparison_id)
        assert comparison is not None
        return comparison, [
            winner_of(session, comparison.job_a),
            winner_of(session, comparison.job_b),
        ]


def complete_comparison(
    engine: Engine, comparison_id: int, grid_path: str, *, lease: Lease | None = None
) -> bool:
    """Record the grid and ask the bot to post it; False when `lease` lost the claim."""
    with session_scope(engine) as session:
        comparison = session.get(Comparison, comparison_id)
        assert comparison is not None
        if not holds(comparison, lease):
            return False
        comparison.state, comparison.grid_path = "done", grid_path
        emit(
            session,
            COMPARISON_RENDERED,
            None,
            comparison_id=comparison_id,
            channel_id=comparison.channel_id,
            user_id=comparison.user_id,
            grid_path=grid_path,
            job_a=comparison.job_a,
            job_b=comparison.job_b,
            diff=comparison.diff,
        )
        return True


def fail_comparison(
    engine: Engine, comparison_id: int, reason: str, *, lease: Lease | None = None
) -> bool:
    with session_scope(engine) as session:
        comparison = session.get(Comparison, comparison_id)
        assert comparison is not None
        if not holds(comparison, lease):
            return False
        mark_failed(session, comparison, COMPARISON_FAILED, reason)
        return True


def set_comparison_message(engine: Engine, comparison_id: int, message_id: int) -> None:
    with session_scope(engine) as session:
        comparison = session.get(Comparison, comparison_id)
        assert comparison is not None
        comparison.message_id = message_id


def comparison_of_message(engine: Engine, message_id: int) -> int | None:
    with session_scope(engine) as session:
        return session.exec(
            select(Comparison.id).where(Comparison.message_id == message_id)
        ).first()


def record_comparison_vote(
    engine: Engine, comparison_id: int, user_id: int, choice: str, on: bool
) -> None:
    with session_scope(engine) as session:
        if not on:
            session.exec(
                delete(ComparisonVote).where(  # type: ignore[call-overload]
                    col(ComparisonVote.comparison_id) == comparison_id,
                    col(ComparisonVote.user_id) == user_id,
                    col(ComparisonVote.choice) == choice,
                )
            )
            return
        exists = session.exec(
            select(ComparisonVote).where(
                ComparisonVote.comparison_id == comparison_id,
                ComparisonVote.user_id == user_id,
                ComparisonVote.choice == choice,
            )
        ).first()
        if exists is None:
            session.add(ComparisonVote(comparison_id=comparison_id, user_id=user_id, choice=choice))


def comparison_tally(engine: Engine, comparison_id: int) -> dict[str, int]:
    with session_scope(engine) as session:
        rows = session.exec(
            select(ComparisonVote.choice).where(ComparisonVote.comparison_id == comparison_id)
        ).all()
        tally = Counter(rows)
        return {"a": tally.get("a", 0), "b": tally.get("b", 0)}


def get_comparison(engine: Engine, comparison_id: int) -> Comparison:
    with session_scope(engine) as session:
        comparison = session.get(Comparison, comparison_id)
        assert comparison is not None
        return comparison


def comparison_nonce(engine: Engine, comparison_id: int) -> str | None:
    """The outbox nonce of the event that posted the comparison (its message's marker)."""
    from storage.events import event_nonce
    from storage.models import Event

    with session_scope(engine) as session:
        for event in session.exec(select(Event).where(Event.kind == COMPARISON_RENDERED)):
            if int(event.payload.get("comparison_id") or 0) == comparison_id:
                return event_nonce(event)
    return None
