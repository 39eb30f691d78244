"""Finalizing a vote: keep the winner (and the next best up to the keep count), delete the rest.

The database change and its `finalized` event commit first; files are deleted after. A crash in
between leaves files of checkpoints already marked deleted, which `sweep_deleted` removes when
the worker's retention sweep runs (`storage.retention`) — never the other way round (a row
pointing at a missing file).
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from storage.db import session_scope
from storage.events import EventKind
from storage.jobs import checkpoints_of, get_job, transition
from storage.models import Checkpoint
from storage.states import JobState
from storage.votes import rank, tally

log = logging.getLogger(__name__)

_STEP_FOLDER = re.compile(r"-step\d{8}$")


class NothingToFinalize(RuntimeError):
    """The job is not waiting for a vote, or has no checkpoint."""


@dataclass(frozen=True)
class FinalizeOutcome:
    job_id: int
    winner: Checkpoint
    kept: list[Checkpoint]
    deleted: list[Checkpoint]
    votes: dict[int, int]
    reason: str


def finalize(engine: Engine, job_id: int, keep: int, by_user: int | None) -> FinalizeOutcome:
    """Choose the winner by votes, mark what is kept, move the job to `finalized`."""
    with session_scope(engine) as session:
        job = get_job(session, job_id)
        if JobState(job.state) != JobState.AWAITING_VOTE:
            raise NothingToFinalize(f"job {job_id} is {job.state}, not waiting for a vote")
        checkpoints = checkpoints_of(session, job_id)
        if not checkpoints:
            raise NothingToFinalize(f"job {job_id} has no checkpoint to keep")
        ranking = rank(checkpoints, tally(session, job_id))
        kept, dropped = ranking.ordered[:keep], ranking.ordered[keep:]
        for checkpoint in kept:
            checkpoint.kept = True
            session.add(checkpoint)
        for checkpoint in dropped:
            checkpoint.deleted = True
            session.add(checkpoint)
        winner = ranking.winner
        job.winner_checkpoint_id = winner.id
        transition(
            session,
            job,
            JobState.FINALIZED,
            EventKind.FINALIZED,
            winner_checkpoint_id=winner.id,
            step=winner.step,
            file=winner.path,
            reason=ranking.reason,
            votes={str(c.step): ranking.votes.get(c.id or 0, 0) for c in checkpoints},
            kept_steps=[c.step for c in kept],
            by=by_user,
        )
    for checkpoint in dropped:
        delete_checkpoint_files(checkpoint)
    return FinalizeOutcome(job_id, winner, kept, dropped, ranking.votes, ranking.reason)


def checkpoint_paths(checkpoint: Checkpoint) -> list[Path]:
    """The files and folders that belong to a checkpoint (its grid stays: it is small, and the
    thread's history shows it).

    LoRA/DoRA: `checkpoints/<stem>.safetensors` + `checkpoints/diffusers/<stem>/`.
    Embedding: `checkpoints/<stem>/<token>.safetensors` (the folder is the checkpoint's) +
    `checkpoints/diffusers/<stem>/`; pivotal LoRA/DoRA: `checkpoints/<stem>/<stem>.safetensors`
    beside its `<token>.safetensors`, the same folder."""
    primary = Path(checkpoint.path)
    paths = [primary]
    if _STEP_FOLDER.search(primary.parent.name):  # an embedding or pivotal: a folder per step
        stem, out_dir = primary.parent.name, primary.parent.parent
        paths.append(primary.parent)
    else:
        stem, out_dir = primary.stem, primary.parent
    diffusers_copy = out_dir / "diffusers" / stem
    if diffusers_copy.exists():
        paths.append(diffusers_copy)
    if checkpoint.state_path:
        paths.append(Path(checkpoint.state_path))
    return paths


def delete_checkpoint_files(checkpoint: Checkpoint) -> None:
    for path in checkpoint_paths(checkpoint):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()
    log.info("job %s: deleted checkpoint at step %s", checkpoint.job_id, checkpoint.step)


def sweep_deleted(engine: Engine) -> int:
    """Delete files of checkpoints marked deleted whose files are still there."""
    with session_scope(engine) as session:
        rows = session.exec(select(Checkpoint).where(col(Checkpoint.deleted).is_(True))).all()
    leftovers = [c for c in rows if any(p.exists() for p in checkpoint_paths(c))]
    for checkpoint in leftovers:
        delete_checkpoint_files(checkpoint)
    return len(leftovers)
