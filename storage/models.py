"""SQLModel tables: everything the bot and the trainer share.

The database is the only link between the bot and the worker: jobs say what to do, events
(the outbox) say what happened, votes say what the team thinks.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, String, UniqueConstraint
from sqlmodel import Field, SQLModel

from storage.states import JobState


def utcnow() -> datetime:
    """Aware UTC now (SQLModel's datetime columns store UTC and refuse naive values)."""
    return datetime.now(UTC)


def _snowflake(**kwargs: Any) -> Any:
    """A Discord id column: 64-bit on Postgres."""
    return Field(sa_type=BigInteger, **kwargs)


class GuildSettings(SQLModel, table=True):
    """Per-guild choices made with `/atelier settings`; unset fields fall back to `Settings`."""

    guild_id: int = _snowflake(primary_key=True)
    results_channel_id: int | None = _snowflake(default=None, nullable=True)
    vote_window_hours: float | None = None
    keep_checkpoints: int | None = None
    jobs_per_member: int | None = None
    manager_role_id: int | None = _snowflake(default=None, nullable=True)
    trainer_role_ids: list[int] = Field(default_factory=list, sa_column=Column(JSON))
    updated_at: datetime = Field(default_factory=utcnow)


class Dataset(SQLModel, table=True):
    """An ingested, normalized, content-addressed dataset folder."""

    __table_args__ = (UniqueConstraint("guild_id", "name"),)

    id: str = Field(primary_key=True, max_length=64, description="Content hash.")
    guild_id: int | None = _snowflake(default=None, nullable=True, index=True)
    name: str | None = Field(default=None, max_length=100)
    description: str | None = Field(default=None, max_length=500)
    path: str
    images: int
    created_by: int | None = _snowflake(default=None, nullable=True)
    report: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=utcnow)


class Job(SQLModel, table=True):
    """One training job and where it stands."""

    id: int | None = Field(default=None, primary_key=True)
    guild_id: int | None = _snowflake(default=None, nullable=True, index=True)
    channel_id: int | None = _snowflake(default=None, nullable=True)
    thread_id: int | None = _snowflake(default=None, nullable=True)
    status_message_id: int | None = _snowflake(default=None, nullable=True)
    owner_id: int = _snowflake(index=True)
    name: str = Field(max_length=100)
    method: str = Field(max_length=20)
    base_model: str = Field(max_length=200)
    dataset_id: str = Field(foreign_key="dataset.id", index=True)
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    state: str = Field(default=JobState.QUEUED, sa_type=String(20), index=True)
    worker_id: str | None = Field(default=None, max_length=200)
    attempts: int = 0
    step: int = 0
    total_steps: int = 0
    resume_path: str | None = None
    error: str | None = None
    cancel_requested_by: int | None = _snowflake(default=None, nullable=True)
    vote_deadline: datetime | None = None
    winner_checkpoint_id: int | None = None
    parent_job_id: int | None = Field(default=None, foreign_key="job.id")
    created_at: datetime = Field(default_factory=utcnow, index=True)
    claimed_at: datetime | None = None
    heartbeat_at: datetime | None = None
    finished_at: datetime | None = None


class Checkpoint(SQLModel, table=True):
    """A saved adapter at one step, with its validation grid."""

    __table_args__ = (UniqueConstraint("job_id", "step"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", index=True)
    step: int
    path: str
    grid_path: str | None = None
    state_path: str | None = None
    loss: float | None = None
    grid_message_id: int | None = _snowflake(default=None, nullable=True, index=True)
    kept: bool = False
    deleted: bool = False
    created_at: datetime = Field(default_factory=utcnow)


class Vote(SQLModel, table=True):
    """One member's vote for one checkpoint (a member may vote for several)."""

    __table_args__ = (UniqueConstraint("checkpoint_id", "user_id"),)

    id: int | None = Field(default=None, primary_key=True)
    checkpoint_id: int = Field(foreign_key="checkpoint.id", index=True)
    user_id: int = _snowflake()
    created_at: datetime = Field(default_factory=utcnow)


class Event(SQLModel, table=True):
    """The outbox: what happened, in order, until the bot has said it in Discord."""

    id: int | None = Field(default=None, primary_key=True)
    job_id: int | None = Field(default=None, foreign_key="job.id", index=True)
    kind: str = Field(max_length=40)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=utcnow)
    attempted_at: datetime | None = None
    tries: int = Field(
        default=0, description="Failed tries to say it (persisted: a restart does not reset them)."
    )
    delivered_at: datetime | None = Field(default=None, index=True)
    message_id: int | None = _snowflake(default=None, nullable=True)


class Generation(SQLModel, table=True):
    """A `/generate` request: a worker renders it in its turn (`storage.fair`)."""

    id: int | None = Field(default=None, primary_key=True)
    guild_id: int | None = _snowflake(default=None, nullable=True)
    channel_id: int | None = _snowflake(default=None, nullable=True)
    user_id: int = _snowflake()
    checkpoint_id: int = Field(foreign_key="checkpoint.id")
    prompt: str = Field(max_length=1000)
    weight: float = 1.0
    seed: int = 0
    state: str = Field(default="queued", max_length=20, index=True)
    worker_id: str | None = Field(default=None, max_length=200)
    attempts: int = 0
    claimed_at: datetime | None = None
    heartbeat_at: datetime | None = None
    image_path: str | None = None
    error: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


class Iteration(SQLModel, table=True):
    """An `/iterate` request: a finalized model renders candidates the team curates by vote
    into the next dataset version (see storage/iterations.py)."""

    id: int | None = Field(default=None, primary_key=True)
    guild_id: int | None = _snowflake(default=None, nullable=True)
    channel_id: int | None = _snowflake(default=None, nullable=True)
    thread_id: int | None = _snowflake(default=None, nullable=True)
    user_id: int = _snowflake()
    job_id: int = Field(foreign_key="job.id", index=True)
    checkpoint_id: int = Field(foreign_key="checkpoint.id")
    dataset_id: str = Field(foreign_key="dataset.id", max_length=64)
    count: int
    contexts: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    state: str = Field(default="queued", max_length=20, index=True)
    worker_id: str | None = Field(default=None, max_length=200)
    attempts: int = 0
    claimed_at: datetime | None = None
    heartbeat_at: datetime | None = None
    error: str | None = None
    deadline: datetime | None = None
    result_dataset_id: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)


class Candidate(SQLModel, table=True):
    """One rendered candidate image of an iteration, and where its vote is."""

    __table_args__ = (UniqueConstraint("iteration_id", "position"),)

    id: int | None = Field(default=None, primary_key=True)
    iteration_id: int = Field(foreign_key="iteration.id", index=True)
    position: int
    prompt: str = Field(max_length=1000)
    context: str = Field(default="", max_length=200)
    style: str = Field(default="", max_length=200)
    seed: int = 0
    image_path: str | None = None
    page_message_id: int | None = _snowflake(default=None, nullable=True, index=True)
    discard_message_id: int | None = _snowflake(default=None, nullable=True, index=True)


class CandidateVote(SQLModel, table=True):
    """A member's keep (+1) or discard (-1) reaction on a candidate."""

    __table_args__ = (UniqueConstraint("candidate_id", "user_id", "value"),)

    id: int | None = Field(default=None, primary_key=True)
    candidate_id: int = Field(foreign_key="candidate.id", index=True)
    user_id: int = _snowflake()
    value: int
    created_at: datetime = Field(default_factory=utcnow)


class DatasetLineage(SQLModel, table=True):
    """A dataset version made from another one (by an iteration's curation)."""

    dataset_id: str = Field(primary_key=True, foreign_key="dataset.id", max_length=64)
    parent_id: str = Field(foreign_key="dataset.id", index=True, max_length=64)
    iteration_id: int | None = Field(default=None, foreign_key="iteration.id")
    version: int = 2
    added: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=utcnow)


class JobChange(SQLModel, table=True):
    """What a child job (`/train lora from:`) changed from its parent: one setting or none."""

    job_id: int = Field(primary_key=True, foreign_key="job.id")
    setting: str | None = Field(default=None, max_length=100)
    old_value: str | None = Field(default=None, max_length=200)
    new_value: str | None = Field(default=None, max_length=200)
    dataset_id: str | None = Field(default=None, max_length=64)


class Comparison(SQLModel, table=True):
    """A `/compare` request: both jobs' winners rendered side by side, then voted 🅰️/🅱️."""

    id: int | None = Field(default=None, primary_key=True)
    guild_id: int | None = _snowflake(default=None, nullable=True)
    channel_id: int | None = _snowflake(default=None, nullable=True)
    user_id: int = _snowflake()
    job_a: int = Field(foreign_key="job.id")
    job_b: int = Field(foreign_key="job.id")
    diff: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    state: str = Field(default="queued", max_length=20, index=True)
    worker_id: str | None = Field(default=None, max_length=200)
    attempts: int = 0
    claimed_at: datetime | None = None
    heartbeat_at: datetime | None = None
    grid_path: str | None = None
    message_id: int | None = _snowflake(default=None, nullable=True, index=True)
    error: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


class ComparisonVote(SQLModel, table=True):
    """A member's 🅰️ or 🅱️ on a comparison grid."""

    __table_args__ = (UniqueConstraint("comparison_id", "user_id", "choice"),)

    id: int | None = Field(default=None, primary_key=True)
    comparison_id: int = Field(foreign_key="comparison.id", index=True)
    user_id: int = _snowflake()
    choice: str = Field(max_length=1)
    created_at: datetime = Field(default_factory=utcnow)
