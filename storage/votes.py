"""Votes on checkpoints, and choosing the winner."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import delete
from sqlmodel import Session, col, func, select

from storage.models import Checkpoint, Vote


def set_vote(session: Session, checkpoint_id: int, user_id: int, *, on: bool) -> bool:
    """Add or remove one member's vote; returns whether anything changed."""
    existing = session.exec(
        select(Vote).where(Vote.checkpoint_id == checkpoint_id, Vote.user_id == user_id)
    ).first()
    if on and existing is None:
        session.add(Vote(checkpoint_id=checkpoint_id, user_id=user_id))
        return True
    if not on and existing is not None:
        session.delete(existing)
        return True
    return False


def replace_votes(session: Session, checkpoint_id: int, user_ids: Iterable[int]) -> None:
    """Make the stored votes of a checkpoint exactly `user_ids` (a recount from Discord)."""
    wanted = set(user_ids)
    session.exec(  # type: ignore[call-overload]
        delete(Vote).where(
            col(Vote.checkpoint_id) == checkpoint_id, col(Vote.user_id).not_in(wanted)
        )
    )
    have = set(session.exec(select(Vote.user_id).where(Vote.checkpoint_id == checkpoint_id)).all())
    for user_id in wanted - have:
        session.add(Vote(checkpoint_id=checkpoint_id, user_id=user_id))


def tally(session: Session, job_id: int) -> dict[int, int]:
    """Votes per checkpoint id of a job (checkpoints without votes are absent)."""
    rows = session.exec(
        select(Vote.checkpoint_id, func.count())
        .join(Checkpoint, col(Checkpoint.id) == col(Vote.checkpoint_id))
        .where(Checkpoint.job_id == job_id)
        .group_by(col(Vote.checkpoint_id))
    ).all()
    return {int(checkpoint_id): int(count) for checkpoint_id, count in rows}


@dataclass(frozen=True)
class Ranking:
    """Checkpoints best first, and a sentence on how the winner was chosen."""

    ordered: list[Checkpoint]
    votes: dict[int, int]
    reason: str

    @property
    def winner(self) -> Checkpoint:
        return self.ordered[0]


def rank(checkpoints: Sequence[Checkpoint], votes: dict[int, int]) -> Ranking:
    """Most votes wins; ties go to the later step; no votes at all → the last checkpoint."""
    if not checkpoints:
        raise ValueError("no checkpoints to choose from")
    ordered = sorted(checkpoints, key=lambda c: (votes.get(c.id or 0, 0), c.step), reverse=True)
    top = votes.get(ordered[0].id or 0, 0)
    if top == 0:
        reason = "no votes were cast, so the last checkpoint was kept"
    elif sum(1 for c in checkpoints if votes.get(c.id or 0, 0) == top) > 1:
        reason = f"tied at {top} vote(s); the later step wins ties"
    else:
        reason = f"most votes ({top})"
    return Ranking(ordered=ordered, votes=votes, reason=reason)
