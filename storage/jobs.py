"""The job queue: enqueue, claim (atomic and fair), heartbeat, transitions, cancel, requeue.

Every state change goes through `transition`, which validates it against the state machine and
writes its event in the same transaction, so a crash never leaves a state without its message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from storage.db import is_sqlite, session_scope
from storage.events import EventKind, emit
from storage.models import Checkpoint, Job, utcnow
from storage.states import LIVE_STATES, JobState, check_transition


class JobNotFound(LookupError):
    """No job with that id."""


class NotYourJob(RuntimeError):
    """A worker touched a job that is no longer assigned to it (it was requeued)."""


_RANKED_QUEUE = """
    SELECT q.id FROM (
        SELECT id, owner_id,
               ROW_NUMBER() OVER (PARTITION BY owner_id ORDER BY id) AS owner_rank
        FROM job WHERE state = 'queued'
    ) q
    {lock_join}
    ORDER BY q.owner_rank + (
        SELECT COUNT(*) FROM job r
        WHERE r.owner_id = q.owner_id AND r.state IN ('preparing', 'training')
    ), q.id
    LIMIT 1
    {lock}
"""
"""Round-robin between members: a member's n-th queued job ranks n, plus one per job of theirs
already running, so one member's ten queued jobs do not starve another member's one."""


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(f"job {job_id} does not exist")
    return job


def transition(
    session: Session, job: Job, target: JobState, kind: str | None = None, **payload: Any
) -> None:
    """Move `job` to `target` (validated) and write its event in the same transaction."""
    check_transition(job.id, JobState(job.state), target)
    job.state = target
    if target == JobState.QUEUED or target not in LIVE_STATES:
        job.worker_id = None  # nobody holds it now
    if target in (JobState.FINALIZED, JobState.FAILED, JobState.CANCELLED):
        job.finished_at = utcnow()
    session.add(job)
    emit(session, kind or str(target), job.id, state=str(target), **payload)


def enqueue(session: Session, job: Job) -> Job:
    """Add a new queued job (and its `queued` event)."""
    job.state = JobState.QUEUED
    job.total_steps = int(job.config.get("steps", 0))
    session.add(job)
    session.flush()
    emit(session, EventKind.QUEUED, job.id, state=JobState.QUEUED)
    return job


def claim(engine: Engine, worker_id: str) -> Job | None:
    """Atomically take the fairest queued job and move it to `preparing`; None if none.

    SQLite: the IMMEDIATE transaction serializes claimers. PostgreSQL: `FOR UPDATE SKIP
    LOCKED` lets concurrent claimers pass over a row another one is taking.
    """
    if is_sqlite(engine):
        sql = _RANKED_QUEUE.format(lock_join="", lock="")
    else:
        sql = _RANKED_QUEUE.replace("SELECT q.id FROM (", "SELECT j.id FROM job j JOIN (", 1)
        sql = sql.format(lock_join="ON q.id = j.id WHERE j.state = 'queued'", lock="")
        sql = sql.replace("LIMIT 1", "LIMIT 1 FOR UPDATE OF j SKIP LOCKED")
    with session_scope(engine) as session:
        row = session.connection().execute(text(sql)).first()
        if row is None:
            return None
        job = get_job(session, row[0])
        now = utcnow()
        job.worker_id, job.claimed_at, job.heartbeat_at = worker_id, now, now
        job.attempts += 1
        transition(session, job, JobState.PREPARING, EventKind.STARTED, worker=worker_id)
        return job


@dataclass(frozen=True)
class Heartbeat:
    """What a worker learns when it heart-beats."""

    owned: bool
    cancel_requested_by: int | None


def heartbeat(engine: Engine, job_id: int, worker_id: str, step: int | None = None) -> Heartbeat:
    """Record that `worker_id` is alive on `job_id`; tell it whether to go on."""
    with session_scope(engine) as session:
        job = get_job(session, job_id)
        if job.worker_id != worker_id or JobState(job.state) not in LIVE_STATES:
            return Heartbeat(owned=False, cancel_requested_by=job.cancel_requested_by)
        job.heartbeat_at = utcnow()
        if step is not None:
            job.step = step
        return Heartbeat(owned=True, cancel_requested_by=job.cancel_requested_by)


def owned_job(session: Session, job_id: int, worker_id: str) -> Job:
    """The job, if `worker_id` still holds it; otherwise `NotYourJob`."""
    job = get_job(session, job_id)
    if job.worker_id != worker_id:
        raise NotYourJob(f"job {job_id} is no longer held by {worker_id}")
    return job


def request_cancel(engine: Engine, job_id: int, by_user: int) -> Job:
    """Cancel a job: at once when nobody runs it, else flag it for the worker (seen within one
    step, which then moves it to `cancelled`)."""
    with session_scope(engine) as session:
        job = get_job(session, job_id)
        state = JobState(job.state)
        if state in (JobState.PREPARING, JobState.TRAINING):
            job.cancel_requested_by = by_user
            session.add(job)
        else:
            job.cancel_requested_by = by_user
            transition(session, job, JobState.CANCELLED, by=by_user)
        return job


def requeue_stale(engine: Engine, stale_after: timedelta, now: datetime | None = None) -> list[int]:
    """Put back jobs whose worker stopped heart-beating; they resume from their newest
    checkpoint (`resume_path` is kept)."""
    cutoff = (now or utcnow()) - stale_after
    requeued: list[int] = []
    with session_scope(engine) as session:
        query = select(Job).where(
            col(Job.state).in_([JobState.PREPARING, JobState.TRAINING]),
            col(Job.heartbeat_at) < cutoff,
        )
        for job in session.exec(query).all():
            lost = job.worker_id
            if job.cancel_requested_by is not None:
                transition(session, job, JobState.CANCELLED, by=job.cancel_requested_by)
                continue
            transition(
                session, job, JobState.QUEUED, EventKind.REQUEUED, lost_worker=lost, step=job.step
            )
            requeued.append(job.id)  # type: ignore[arg-type]
    return requeued


def retry(engine: Engine, job_id: int, by_user: int) -> Job:
    """Queue a failed job again; it resumes from its newest checkpoint."""
    with session_scope(engine) as session:
        job = get_job(session, job_id)
        job.error = None
        job.cancel_requested_by = None
        transition(session, job, JobState.QUEUED, EventKind.REQUEUED, by=by_user, step=job.step)
        return job


def queue_position(session: Session, job: Job) -> int:
    """1-based position among queued jobs by id (0 when not queued)."""
    if JobState(job.state) != JobState.QUEUED:
        return 0
    ahead = session.exec(
        select(func.count()).select_from(Job).where(Job.state == JobState.QUEUED, Job.id < job.id)
    ).one()
    return int(ahead) + 1


def active_jobs_of(session: Session, guild_id: int | None, owner_id: int) -> int:
    """How many queued or running jobs a member has."""
    query = (
        select(func.count())
        .select_from(Job)
        .where(Job.owner_id == owner_id, col(Job.state).in_(list(LIVE_STATES)))
    )
    if guild_id is not None:
        query = query.where(Job.guild_id == guild_id)
    return int(session.exec(query).one())


def checkpoints_of(
    session: Session, job_id: int, *, include_deleted: bool = False
) -> list[Checkpoint]:
    query = select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(col(Checkpoint.step))
    if not include_deleted:
        query = query.where(col(Checkpoint.deleted).is_(False))
    return list(session.exec(query).all())


def checkpoint_steps(engine: Engine, job_id: int) -> set[int]:
    """Steps of the checkpoints recorded for a job (deleted ones included)."""
    with session_scope(engine) as session:
        rows = session.exec(select(Checkpoint.step).where(Checkpoint.job_id == job_id)).all()
        return {int(step) for step in rows}


# --- what a worker reports (each checks the worker still holds the job) ---------------------


def start_training(
    engine: Engine, job_id: int, worker_id: str, total_steps: int, resumed_from: int = 0
) -> None:
    """`preparing → training`, once data and model are loaded (and any saved state read)."""
    with session_scope(engine) as session:
        job = owned_job(session, job_id, worker_id)
        job.total_steps = total_steps
        job.step = resumed_from
        transition(session, job, JobState.TRAINING, total=total_steps, resumed_from=resumed_from)


def report_progress(engine: Engine, job_id: int, worker_id: str, **progress: Any) -> None:
    """A progress event (the worker throttles how often)."""
    with session_scope(engine) as session:
        job = owned_job(session, job_id, worker_id)
        job.step = int(progress.get("step", job.step))
        job.heartbeat_at = utcnow()
        emit(session, EventKind.PROGRESS, job_id, **progress)


def add_checkpoint(
    engine: Engine, job_id: int, worker_id: str, checkpoint: Checkpoint, **extra: Any
) -> Checkpoint:
    """Record a checkpoint, make it the resume point, and write `checkpoint_ready`.

    `extra` fields go into the event payload only (e.g. `heldout_loss`: float | None)."""
    with session_scope(engine) as session:
        job = owned_job(session, job_id, worker_id)
        checkpoint.job_id = job_id
        existing = session.exec(
            select(Checkpoint).where(
                Checkpoint.job_id == job_id, Checkpoint.step == checkpoint.step
            )
        ).first()
        if existing is not None:  # re-trained after a resume: replace the files' record
            for field in ("path", "grid_path", "state_path", "loss"):
                setattr(existing, field, getattr(checkpoint, field))
            existing.deleted = False  # its files exist again (a retry after the sweep)
            checkpoint = existing
        session.add(checkpoint)
        job.step = checkpoint.step
        job.resume_path = checkpoint.state_path or job.resume_path
        session.add(job)
        session.flush()
        emit(
            session,
            EventKind.CHECKPOINT,
            job_id,
            checkpoint_id=checkpoint.id,
            step=checkpoint.step,
            total=job.total_steps,
            grid_path=checkpoint.grid_path,
            loss=checkpoint.loss,
            **extra,
        )
        return checkpoint


def finish_training(
    engine: Engine, job_id: int, worker_id: str, vote_deadline: datetime, **summary: Any
) -> None:
    """`training → awaiting_vote`, with the comparison grid and loss curve in the event."""
    with session_scope(engine) as session:
        job = owned_job(session, job_id, worker_id)
        job.vote_deadline = vote_deadline
        transition(
            session,
            job,
            JobState.AWAITING_VOTE,
            EventKind.TRAINING_DONE,
            deadline=vote_deadline.isoformat(),
            **summary,
        )


def fail(engine: Engine, job_id: int, worker_id: str | None, reason: str) -> None:
    """Move a job to `failed` with a reason a member understands."""
    with session_scope(engine) as session:
        job = get_job(session, job_id)
        if worker_id is not None and job.worker_id != worker_id:
            raise NotYourJob(f"job {job_id} is no longer held by {worker_id}")
        job.error = reason
        transition(session, job, JobState.FAILED, reason=reason, step=job.step)


def confirm_cancelled(engine: Engine, job_id: int, worker_id: str) -> None:
    """The worker stopped a job whose cancel was requested."""
    with session_scope(engine) as session:
        job = owned_job(session, job_id, worker_id)
        transition(session, job, JobState.CANCELLED, by=job.cancel_requested_by, step=job.step)
