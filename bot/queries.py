"""The bot's database reads and writes: small synchronous functions, always called through
`bot.db.run_db` (a worker thread)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from bot.changes import parse_change
from bot.errors import BadInput, LimitReached, NotFound
from storage import comparisons, iterations, jobs, lineage
from storage.datasets import record_dataset
from storage.db import session_scope
from storage.events import EventKind
from storage.models import CandidateVote, Checkpoint, Dataset, Event, GuildSettings, Job, utcnow
from storage.requests import RenderQuotaReached, check_render_quota
from storage.states import LIVE_STATES, OPEN_STATES, JobState
from storage.votes import replace_votes, set_vote

DEFAULT_STEPS_PER_SECOND = 1.0
"""Guess for queued jobs when no job has reported a speed yet."""


def guild_settings(engine: Engine, guild_id: int | None) -> GuildSettings | None:
    if guild_id is None:
        return None
    with session_scope(engine) as session:
        return session.get(GuildSettings, guild_id)


def update_guild_settings(
    engine: Engine, guild_id: int, clear: tuple[str, ...] = (), **fields: Any
) -> GuildSettings:
    """Set the given fields (None values are left alone) and unset the `clear` ones."""
    with session_scope(engine) as session:
        row = session.get(GuildSettings, guild_id) or GuildSettings(guild_id=guild_id)
        for key, value in fields.items():
            if value is not None:
                setattr(row, key, value)
        for key in clear:
            setattr(row, key, None)
        row.updated_at = utcnow()
        session.add(row)
        session.flush()
        return row


def get_job(engine: Engine, job_id: int, guild_id: int | None = None) -> Job:
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
    if job is None or (guild_id is not None and job.guild_id != guild_id):
        raise NotFound(f"There is no job #{job_id} in this server.")
    return job


@dataclass(frozen=True)
class NewJob:
    job: Job
    position: int
    eta_seconds: float | None


def create_job(engine: Engine, ingest: Any, job: Job, limit: int) -> NewJob:
    """Record the dataset and enqueue the job, checking the member's limit in the same
    transaction (so two /train at once cannot both pass it)."""
    with session_scope(engine) as session:
        if jobs.active_jobs_of(session, job.guild_id, job.owner_id) >= limit:
            raise LimitReached(
                f"You already have {limit} job(s) queued or running; wait for one to finish."
            )
        dataset = record_dataset(session, ingest, guild_id=job.guild_id, created_by=job.owner_id)
        job.dataset_id = dataset.id
        jobs.enqueue(session, job)
        position = jobs.queue_position(session, job)
        eta = start_estimate(session, job)
        return NewJob(job, position, eta)


def member_limit(guild: GuildSettings | None, default: int) -> int:
    """Queued + running jobs a member may have: the guild's setting, else the operator's."""
    return guild.jobs_per_member if guild and guild.jobs_per_member else default


def retry_job(engine: Engine, job_id: int, by_user: int, limit: int) -> Job:
    """Queue a failed job again if its owner is under their `jobs_per_member` limit."""
    with session_scope(engine) as session:
        job = jobs.get_job(session, job_id)
        if jobs.active_jobs_of(session, job.guild_id, job.owner_id) >= limit:
            raise LimitReached(
                f"<@{job.owner_id}> already has {limit} job(s) queued or running; retry job "
                f"#{job_id} when one of them is done."
            )
    return jobs.retry(engine, job_id, by_user)


def start_estimate(session: Session, job: Job) -> float | None:
    """Seconds until `job` starts: the running jobs' ETA plus the queued jobs ahead of it."""
    running = session.exec(
        select(Job).where(col(Job.state).in_([JobState.PREPARING, JobState.TRAINING]))
    ).all()
    ahead = session.exec(
        select(Job).where(Job.state == JobState.QUEUED, col(Job.id) < (job.id or 0))
    ).all()
    if not running and not ahead:
        return 0.0
    speed = _recent_speed(session)
    seconds = sum(max(j.total_steps - j.step, 0) / speed for j in running)
    return seconds + sum(j.total_steps / speed for j in ahead)


def _recent_speed(session: Session) -> float:
    event = session.exec(
        select(Event).where(Event.kind == EventKind.PROGRESS).order_by(col(Event.id).desc())
    ).first()
    speed = float((event.payload or {}).get("steps_per_second") or 0) if event else 0.0
    return speed if speed > 0 else DEFAULT_STEPS_PER_SECOND


def dataset_report(
    engine: Engine, dataset_id: str, resolution: int | None = None, base_model: str = ""
) -> dict[str, Any]:
    """The stored QA report; with `resolution`, judged at that size and base model (a job's)."""
    from storage.ingest.judged import judge_folder

    with session_scope(engine) as session:
        dataset = session.get(Dataset, dataset_id)
        if dataset is None:
            return {}
        report, folder = dict(dataset.report), Path(dataset.path)
    if resolution is None:
        return report
    return judge_folder(report, folder, resolution, base_model)


def set_job_fields(engine: Engine, job_id: int, **fields: Any) -> None:
    with session_scope(engine) as session:
        job = jobs.get_job(session, job_id)
        for key, value in fields.items():
            setattr(job, key, value)
        session.add(job)


def set_grid_message(engine: Engine, checkpoint_id: int, message_id: int) -> None:
    with session_scope(engine) as session:
        checkpoint = session.get(Checkpoint, checkpoint_id)
        if checkpoint is not None:
            checkpoint.grid_message_id = message_id
            session.add(checkpoint)


def set_event_message(engine: Engine, event_id: int | None, message_id: int) -> None:
    """Record an event's message before delivery ends (e.g. before its reactions are added)."""
    with session_scope(engine) as session:
        event = session.get(Event, event_id)
        if event is not None:
            event.message_id = message_id
            session.add(event)


def checkpoints(engine: Engine, job_id: int) -> list[Checkpoint]:
    with session_scope(engine) as session:
        return jobs.checkpoints_of(session, job_id)


def get_checkpoint(engine: Engine, checkpoint_id: int) -> Checkpoint | None:
    with session_scope(engine) as session:
        return session.get(Checkpoint, checkpoint_id)


def queue_rows(engine: Engine, guild_id: int) -> list[dict[str, Any]]:
    """Live jobs of a guild for `/jobs`, running first, then by queue position."""
    with session_scope(engine) as session:
        rows = session.exec(
            select(Job)
            .where(Job.guild_id == guild_id, col(Job.state).in_(list(LIVE_STATES)))
            .order_by(col(Job.id))
        ).all()
        out = []
        for job in rows:
            position = jobs.queue_position(session, job)
            eta = start_estimate(session, job) if position else _remaining(session, job)
            out.append(
                {
                    "id": job.id,
                    "name": job.name,
                    "owner_id": job.owner_id,
                    "state": job.state,
                    "position": position,
                    "step": job.step,
                    "total": job.total_steps,
                    "eta": eta,
                }
            )
    return sorted(out, key=lambda r: (r["position"], r["id"]))


def _remaining(session: Session, job: Job) -> float | None:
    return max(job.total_steps - job.step, 0) / _recent_speed(session) if job.total_steps else None


def jobs_for_choice(
    engine: Engine, guild_id: int, user_id: int | None, current: str
) -> list[tuple[int, str, str]]:
    """(id, name, state) of a guild's jobs matching what the member typed, newest first;
    `user_id` limits to that member's jobs."""
    with session_scope(engine) as session:
        query = select(Job).where(Job.guild_id == guild_id).order_by(col(Job.id).desc())
        if user_id is not None:
            query = query.where(Job.owner_id == user_id)
        rows = session.exec(query.limit(200)).all()
    needle = current.strip().lower().lstrip("#")
    return [
        (j.id, j.name, j.state)
        for j in rows  # type: ignore[misc]
        if not needle or needle in f"{j.id} {j.name}".lower()
    ][:25]


def finalized_models(engine: Engine, guild_id: int) -> list[tuple[Job, Checkpoint | None]]:
    with session_scope(engine) as session:
        rows = session.exec(
            select(Job)
            .where(Job.guild_id == guild_id, Job.state == JobState.FINALIZED)
            .order_by(col(Job.id).desc())
            .limit(25)
        ).all()
        return [(j, session.get(Checkpoint, j.winner_checkpoint_id or 0)) for j in rows]


# --- votes ---------------------------------------------------------------------------------


def comparison_message_ids(engine: Engine, job_id: int) -> list[int]:
    """Messages that showed a job's comparison grid (training_done events delivered)."""
    with session_scope(engine) as session:
        rows = session.exec(
            select(Event.message_id).where(
                Event.job_id == job_id,
                Event.kind == EventKind.TRAINING_DONE,
                col(Event.message_id).is_not(None),
            )
        ).all()
    return [int(r) for r in rows]


@dataclass(frozen=True)
class VoteTarget:
    """The message a reaction landed on, as far as votes are concerned."""

    job_id: int
    kind: str  # "grid" or "comparison"
    checkpoint_id: int | None  # set for grid messages


def vote_target(engine: Engine, message_id: int) -> VoteTarget | None:
    with session_scope(engine) as session:
        checkpoint = session.exec(
            select(Checkpoint).where(Checkpoint.grid_message_id == message_id)
        ).first()
        if checkpoint is not None:
            job = session.get(Job, checkpoint.job_id)
            if job is None or JobState(job.state) not in OPEN_STATES:
                return None
            return VoteTarget(checkpoint.job_id, "grid", checkpoint.id)
        event = session.exec(
            select(Event).where(
                Event.message_id == message_id, Event.kind == EventKind.TRAINING_DONE
            )
        ).first()
        if event is None or event.job_id is None:
            return None
        job = session.get(Job, event.job_id)
        if job is None or JobState(job.state) != JobState.AWAITING_VOTE:
            return None
        return VoteTarget(event.job_id, "comparison", None)


def record_vote(engine: Engine, checkpoint_id: int, user_id: int, on: bool) -> bool:
    with session_scope(engine) as session:
        return set_vote(session, checkpoint_id, user_id, on=on)


def store_recount(engine: Engine, counts: dict[int, set[int]]) -> None:
    with session_scope(engine) as session:
        for checkpoint_id, users in counts.items():
            replace_votes(session, checkpoint_id, users)


def open_vote_jobs(engine: Engine) -> list[Job]:
    with session_scope(engine) as session:
        return list(
            session.exec(
                select(Job).where(col(Job.state).in_([JobState.TRAINING, JobState.AWAITING_VOTE]))
            ).all()
        )


def due_jobs(engine: Engine, now: datetime | None = None) -> list[Job]:
    moment = now or utcnow()
    with session_scope(engine) as session:
        rows = session.exec(
            select(Job).where(
                Job.state == JobState.AWAITING_VOTE, col(Job.vote_deadline).is_not(None)
            )
        ).all()
    return [j for j in rows if _aware(j.vote_deadline) <= moment]  # type: ignore[arg-type]


def _aware(moment: datetime) -> datetime:
    from datetime import UTC

    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def keep_count(engine: Engine, guild_id: int | None, default: int) -> int:
    guild = guild_settings(engine, guild_id)
    return guild.keep_checkpoints if guild and guild.keep_checkpoints else default


def queue_place(engine: Engine, job_id: int) -> tuple[int, float | None]:
    """A queued job's place in the queue and the guess of when it starts (seconds)."""
    with session_scope(engine) as session:
        current = jobs.get_job(session, job_id)
        return jobs.queue_position(session, current), start_estimate(session, current)


def previous_heldout(engine: Engine, job_id: int, step: int) -> float | None:
    """The held-out loss of the job's checkpoint before `step` (from its event), if any."""
    with session_scope(engine) as session:
        rows = session.exec(
            select(Event)
            .where(Event.job_id == job_id, Event.kind == EventKind.CHECKPOINT)
            .order_by(col(Event.id))
        ).all()
    earlier = [e.payload for e in rows if int(e.payload.get("step") or 0) < step]
    if not earlier:
        return None
    value = max(reversed(earlier), key=lambda p: int(p.get("step") or 0)).get("heldout_loss")
    return float(value) if value is not None else None


# --- /iterate, /compare, /train lora from: ---------------------------------------------------


def _within_render_quota(session: Session, limit: int, fields: dict[str, Any]) -> None:
    try:
        check_render_quota(session, fields["guild_id"], fields["user_id"], 1, limit)
    except RenderQuotaReached as error:
        raise LimitReached(str(error)) from None


def request_iteration(engine: Engine, limit: int, **fields: Any) -> int:
    """Queue an iteration's renders within the member's render quota; its id."""
    with session_scope(engine) as session:
        _within_render_quota(session, limit, fields)
        return iterations.request_iteration(session, **fields).id  # type: ignore[return-value]


def request_comparison(engine: Engine, limit: int, **fields: Any) -> int:
    """Queue a comparison's renders within the member's render quota; its id."""
    with session_scope(engine) as session:
        _within_render_quota(session, limit, fields)
        return comparisons.request_comparison(session, **fields).id  # type: ignore[return-value]


def store_candidate_recount(engine: Engine, votes: dict[tuple[int, int], set[int]]) -> None:
    """Make the stored candidate votes `(candidate, keep/discard) → members` exactly these."""
    with session_scope(engine) as session:
        for (candidate_id, value), users in votes.items():
            rows = session.exec(
                select(CandidateVote).where(
                    CandidateVote.candidate_id == candidate_id, CandidateVote.value == value
                )
            ).all()
            for row in rows:
                if row.user_id not in users:
                    session.delete(row)
            for user in users - {row.user_id for row in rows}:
                session.add(CandidateVote(candidate_id=candidate_id, user_id=user, value=value))


def next_version_job(
    engine: Engine,
    parent_id: int,
    guild_id: int | None,
    channel_id: int | None,
    owner_id: int,
    name: str | None,
    change: str | None,
    limit: int,
    catalogue: Collection[str] | Mapping[str, Any],
) -> Job:
    """Queue the next version of a model: its newest dataset, one setting changed (or none)."""
    with session_scope(engine) as session:
        parent = session.get(Job, parent_id)
        if parent is None or (guild_id is not None and parent.guild_id not in (None, guild_id)):
            raise NotFound(f"There is no job #{parent_id}.")
        if parent.state == "cancelled":
            raise BadInput(f"Job #{parent_id} was cancelled; retrain from a job that finished.")
        if jobs.active_jobs_of(session, guild_id, owner_id) >= limit:
            raise BadInput(
                f"You already have {limit} job(s) queued or running; wait for one to finish."
            )
        dataset = lineage.newest_dataset(session, parent.dataset_id)
        key, old, new, config = parse_change(
            change, {**parent.config, "dataset": dataset.path}, catalogue
        )
        version = lineage.dataset_version(session, dataset.id)
        child = Job(
            guild_id=guild_id,
            channel_id=channel_id,
            owner_id=owner_id,
            name=name or f"{parent.name}-v{version}"[:100],
            method=parent.method,
            base_model=config.get("base_model") or parent.base_model,
            dataset_id=dataset.id,
            config=config,
        )
        return lineage.enqueue_child(session, parent, child, key, old, new)
