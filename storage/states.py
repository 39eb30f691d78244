"""The job state machine from design.md."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    PREPARING = "preparing"
    TRAINING = "training"
    AWAITING_VOTE = "awaiting_vote"
    FINALIZED = "finalized"
    FAILED = "failed"
    CANCELLED = "cancelled"


LIVE_STATES = frozenset({JobState.QUEUED, JobState.PREPARING, JobState.TRAINING})
"""States in which a job still holds (or waits for) a worker."""

OPEN_STATES = LIVE_STATES | {JobState.AWAITING_VOTE}
"""States that are not final."""

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.PREPARING, JobState.FAILED, JobState.CANCELLED}),
    JobState.PREPARING: frozenset(
        {JobState.TRAINING, JobState.QUEUED, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.TRAINING: frozenset(
        {JobState.AWAITING_VOTE, JobState.QUEUED, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.AWAITING_VOTE: frozenset({JobState.FINALIZED, JobState.FAILED, JobState.CANCELLED}),
    JobState.FINALIZED: frozenset(),
    JobState.FAILED: frozenset({JobState.QUEUED}),
    JobState.CANCELLED: frozenset(),
}
"""Allowed moves. `training → queued` is a requeue after a lost worker; `failed → queued` is
`/job retry` (resumes from the newest checkpoint)."""


class IllegalTransition(ValueError):
    """A state change the state machine does not allow."""

    def __init__(self, job_id: int | None, current: JobState, target: JobState) -> None:
        super().__init__(f"job {job_id}: cannot go from {current} to {target}")
        self.current = current
        self.target = target


def check_transition(job_id: int | None, current: JobState, target: JobState) -> None:
    """Raise `IllegalTransition` unless `current → target` is allowed."""
    if target not in TRANSITIONS[JobState(current)]:
        raise IllegalTransition(job_id, JobState(current), target)
