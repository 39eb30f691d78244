"""`/generate` requests: the bot asks, a worker renders it in its turn (`storage.fair`), the
outbox tells."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session

from storage.db import session_scope
from storage.events import EventKind, emit
from storage.models import Checkpoint, Generation
from storage.requests import Lease, claim_oldest, holds, mark_failed


class UnknownModel(LookupError):
    """The checkpoint asked for does not exist or was deleted."""


def request_generation(
    session: Session,
    *,
    guild_id: int | None,
    channel_id: int | None,
    user_id: int,
    checkpoint_id: int,
    prompt: str,
    weight: float = 1.0,
    seed: int = 0,
) -> Generation:
    checkpoint = session.get(Checkpoint, checkpoint_id)
    if checkpoint is None or checkpoint.deleted:
        raise UnknownModel(f"model checkpoint {checkpoint_id} is not available")
    generation = Generation(
        guild_id=guild_id,
        channel_id=channel_id,
        user_id=user_id,
        checkpoint_id=checkpoint_id,
        prompt=prompt,
        weight=weight,
        seed=seed,
    )
    session.add(generation)
    session.flush()
    return generation


def claim_generation(engine: Engine, worker_id: str) -> Generation | None:
    """Take the oldest queued request; two workers never share one."""
    return claim_oldest(engine, Generation, worker_id)


def complete_generation(
    engine: Engine, generation_id: int, image_path: str, *, lease: Lease | None = None
) -> bool:
    """Record the image and ask the bot to post it; False when `lease` lost the claim."""
    with session_scope(engine) as session:
        generation = session.get(Generation, generation_id)
        assert generation is not None
        if not holds(generation, lease):
            return False
        generation.state, generation.image_path = "done", image_path
        checkpoint = session.get(Checkpoint, generation.checkpoint_id)
        emit(
            session,
            EventKind.GENERATED,
            checkpoint.job_id if checkpoint else None,
            generation_id=generation_id,
            image_path=image_path,
            channel_id=generation.channel_id,
            user_id=generation.user_id,
            prompt=generation.prompt,
            weight=generation.weight,
            seed=generation.seed,
        )
        return True


def fail_generation(
    engine: Engine, generation_id: int, reason: str, *, lease: Lease | None = None
) -> bool:
    with session_scope(engine) as session:
        generation = session.get(Generation, generation_id)
        assert generation is not None
        if not holds(generation, lease):
            return False
        checkpoint = session.get(Checkpoint, generation.checkpoint_id)
        job_id = checkpoint.job_id if checkpoint else None
        mark_failed(session, generation, "generation_failed", reason, job_id)
        return True
