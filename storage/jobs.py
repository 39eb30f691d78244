"""The job queue: enqueue, claim (atomic and fair), heartbeat, transitions, cancel, requeue.

Every state change goes through `transition`, which validates it against the state machine and
writes its event in the same transaction, so a crash never leaves a state without its message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from storage.db import session_scope
from storage.events import EventKind, emit
from storage.fair import ranked
from storage.models import Checkpoint, Job, utcnow
from storage.states import LIVE_STATES, JobState, check_transition


class JobNotFound(LookupError):
    """No job with that id."""


class NotYourJob(RuntimeError):
    """A worker touched a job that is no longer assigned to it (it was requeued)."""


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

    The order is `storage.fair`'s (round-robin between members, counting their running
    renders too); `storage.worktime.claim_next` takes renders and jobs in that one order. The
    returned job's `attempts` is this claim's fencing token (see `holds`)."""
    with session_scope(engine) as session:
        for _kind, job_id in ranked(session, ("job",)):
            job = take(session, job_id, worker_id)
            if job is not None:
                return job
    return None


def take(session: Session, job_id: int, worker_id: str) -> Job | None:
    """Claim one queued job in the session's transaction, or None when another worker took it.

    SQLite: the IMMEDIATE transaction serializes claimers. PostgreSQL: `FOR UPDATE SKIP
    LOCKED` lets concurrent claimers pass over a row another one is taking."""
    query = (
        select(Job)
        .where(col(Job.id) == job_id, col(Job.state) == JobState.QUEUED)
        .with_for_update(skip_locked=True)
    )
    job = session.exec(query).first()
    if job is None:
        return None
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


def heartbeat(
    engine: Engine,
    job_id: int,
    worker_id: str,
    step: int | None = None,
    *,
    attempt: int | None = None,
) -> Heartbeat:
    """Record that `worker_id` is alive on `job_id` (its claim `attempt`); tell it whether to
    go on. A claim that was requeued (and perhaps claimed again) is not owned any more."""
    with session_scope(engine) as session:
        job = get_job(session, job_id)
        if not holds(job, worker_id, attempt) or JobState(job.state) not in LIVE_STATES:
            return Heartbeat(owned=False, cancel_requested_by=job.cancel_requested_by)
        job.heartbeat_at = utcnow()
        if step is not None:
            job.step = step
        return Heartbeat(owned=True, cancel_requested_by=job.cancel_requested_by)


def holds(job: Job, worker_id: str, attempt: int | None) -> bool:
    """Whether `worker_id`'s claim is the job's current one.

    Fencing is by the claim's attempt number, not only the name: every claim counts one more
    attempt, so a worker whose claim was requeued (a database blip, a missed heartbeat) cannot
    write for the job again even if the same name claimed it anew. `attempt=None` (tools,
    tests) checks the name alone; the worker always passes its claim's attempt."""
    if job.worker_id != worker_id:
        return False
    return attempt is None or job.attempts == attempt


def owned_job(session: Session, job_id: int, worker_id: str, attempt: int | None = None) -> Job:
    """The job, if `worker_id` (with its claim `attempt`) still holds it; else `NotYourJob`."""
    job = get_job(session, job_id)
    if not holds(job, worker_id, attempt):
        raise NotYourJob(f"job {job_id} is no longer held by {worker_id} (attempt {attempt})")
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
    engine: Engine,
    job_id: int,
    worker_id: str,
    total_steps: int,
    resumed_from: int = 0,
    *,
    attempt: int | None = None,
) -> None:
    """`preparing → training`, once data and model are loaded (and any saved state read)."""
    with session_scope(engine) as session:
        job = owned_job(session, job_id, worker_id, attempt)
        job.total_steps = total_steps
        job.step = resumed_from
        transition(session, job, JobState.TRAINING, total=total_steps, resumed_from=resumed_from)


def report_progress(
    engine: Engine, job_id: int, worker_id: str, *, attempt: int | None = None, **progress: Any
) -> None:
    """A progress event (the worker throttles how often)."""
    with session_scope(engine) as session:
        job = owned_job(session, job_id, worker_id, attempt)
        job.step = int(progress.get("step", job.step))
        job.heartbeat_at = utcnow()
        emit(session, EventKind.PROGRESS, job_id, **progress)


def add_checkpoint(
    engine: Engine,
    job_id: int,
    worker_id: str,
    checkpoint: Checkpoint,
    *,
    attempt: int | None = None,
    **extra: Any,
) -> Checkpoint:
    """Record a checkpoint, make it the resume point, and write `checkpoint_ready`.

    `extra` fields go into the event payload only (e.g. `heldout_loss`: float | None)."""
    with session_scope(engine) as session:
        job = owned_job(session, job_id, worker_id, attempt)
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
    engine: Engine,
    job_id: int,
    worker_id: str,
    vote_deadline: datetime,
    *,
    attempt: int | None = None,
    **summary: Any,
) -> None:
    """`training → awaiting_vote`, with the comparison grid and loss curve in the event."""
    with session_scope(engine) as session:
        job = owned_job(session, job_id, worker_id, attempt)
        job.vote_deadline = vote_deadline
        transition(
            session,
            job,
            JobState.AWAITING_VOTE,
            EventKind.TRAINING_DONE,
            deadline=vote_deadline.isoformat(),
            **summary,
        )


def fail(
    engine: Engine, job_id: int, worker_id: str | None, reason: str, *, attempt: int | None = None
) -> None:
    """Move a job to `failed` with a reason a member understands (`worker_id` None: the bot or
    an operator, who need not hold it)."""
    with session_scope(engine) as session:
        job = get_job(session, job_id)
        if worker_id is not None and not holds(job, worker_id, attempt):
            raise NotYourJob(f"job {job_id} is no longer held by {worker_id} (attempt {attempt})")
        job.error = reason
        transition(session, job, JobState.FAILED, reason=reason, step=job.step)


def confirm_cancelled(
    engine: Engine, job_id: int, worker_id: str, *, attempt: int | None = None
) -> None:
    """The worker stopped a job whose cancel was requested."""
    with session_scope(engine) as session:
        job = owned_job(session, job_id, worker_id, attempt)
        transition(session, job, JobState.CANCELLED, by=job.cancel_requested_by, step=job.step)
