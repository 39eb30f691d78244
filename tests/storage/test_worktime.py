"""Worker time on real databases (SQLite and PostgreSQL): one fair order for training jobs and
render requests, render leases requeued when their worker dies, and fencing by claim attempt."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from storage import jobs, requests
from storage.db import session_scope
from storage.generations import complete_generation, request_generation
from storage.models import Checkpoint, Event, Generation, Job
from storage.states import JobState
from storage.worktime import claim_next
from tests.storage.helpers import make_jobs


def _model(engine: Engine) -> int:
    """A checkpoint to render with (its job is done with the worker)."""
    (job_id,) = make_jobs(engine, [9])
    jobs.claim(engine, "trainer")
    checkpoint = jobs.add_checkpoint(
        engine, job_id, "trainer", Checkpoint(job_id=job_id, step=10, path="m.safetensors")
    )
    jobs.fail(engine, job_id, None, "done with the worker")  # frees member 9's slot
    return checkpoint.id  # type: ignore[return-value]


def _generations(engine: Engine, checkpoint_id: int, user_id: int, count: int) -> list[int]:
    with session_scope(engine) as session:
        return [
            request_generation(
                session,
                guild_id=1,
                channel_id=2,
                user_id=user_id,
                checkpoint_id=checkpoint_id,
                prompt=f"p{n}",
            ).id  # type: ignore[misc]
            for n in range(count)
        ]


def _events(engine: Engine, job_id: int | None = None) -> list[Event]:
    with session_scope(engine) as session:
        query = select(Event).order_by(col(Event.id))
        if job_id is not None:
            query = query.where(Event.job_id == job_id)
        return list(session.exec(query).all())


def test_renders_and_training_take_turns_in_one_fair_order(engine: Engine) -> None:
    checkpoint_id = _model(engine)
    renders = _generations(engine, checkpoint_id, user_id=1, count=3)
    (training,) = make_jobs(engine, [2])  # member 2 asked after member 1's three renders
    order = []
    for _ in range(4):
        claimed = claim_next(engine, "w")
        assert claimed is not None
        order.append((claimed.kind, claimed.row.id))
    assert order[:2] == [("generation", renders[0]), ("job", training)], (
        "member 2's training job must not wait behind all of member 1's renders"
    )
    assert sorted(order[2:]) == [("generation", renders[1]), ("generation", renders[2])]
    assert claim_next(engine, "w") is None


def test_running_renders_count_against_their_member_in_the_job_order(engine: Engine) -> None:
    checkpoint_id = _model(engine)
    _generations(engine, checkpoint_id, user_id=1, count=1)
    assert requests.claim_oldest(engine, Generation, "renderer") is not None  # member 1 busy
    _first, second = make_jobs(engine, [1, 2])
    taken = jobs.claim(engine, "w")
    assert taken is not None and taken.id == second, "member 1 already holds a worker"


def test_dead_render_is_requeued_then_fails_out_loud(engine: Engine) -> None:
    checkpoint_id = _model(engine)
    (request_id,) = _generations(engine, checkpoint_id, user_id=1, count=1)
    leases = []
    for attempt in range(1, requests.MAX_RENDER_ATTEMPTS + 1):
        claimed = claim_next(engine, f"w{attempt}")
        assert claimed is not None and claimed.row.id == request_id
        lease = requests.lease_of(claimed.row)
        assert lease.attempt == attempt and requests.beat(engine, "generation", request_id, lease)
        leases.append(lease)
        assert requests.requeue_stale(engine, timedelta(hours=1)) == [], "alive: kept"
        outcome = requests.requeue_stale(engine, timedelta(seconds=0))
        expected = "failed" if attempt == requests.MAX_RENDER_ATTEMPTS else "requeued"
        assert outcome == [("generation", request_id, expected)]
    with session_scope(engine) as session:
        row = session.get(Generation, request_id)
        assert row is not None and row.state == "failed" and "stopped 3 times" in (row.error or "")
    (told,) = [e for e in _events(engine) if e.kind == "generation_failed"]
    assert told.payload["user_id"] == 1 and told.payload["generation_id"] == request_id
    assert claim_next(engine, "w") is None


def test_a_lost_render_lease_writes_nothing(engine: Engine) -> None:
    checkpoint_id = _model(engine)
    (request_id,) = _generations(engine, checkpoint_id, user_id=1, count=1)
    old = claim_next(engine, "w")
    assert old is not None
    old_lease = requests.lease_of(old.row)
    requests.requeue_stale(engine, timedelta(seconds=0))
    new = claim_next(engine, "w")  # the same name claims it again: the attempt tells them apart
    assert new is not None and new.row.attempts == 2
    assert not requests.beat(engine, "generation", request_id, old_lease)
    assert not complete_generation(engine, request_id, "/old.png", lease=old_lease)
    assert complete_generation(engine, request_id, "/new.png", lease=requests.lease_of(new.row))
    with session_scope(engine) as session:
        row = session.get(Generation, request_id)
        assert row is not None and (row.state, row.image_path) == ("done", "/new.png")
    assert [e.kind for e in _events(engine)].count("generated") == 1


def test_a_requeued_claim_is_fenced_by_its_attempt(engine: Engine) -> None:
    (job_id,) = make_jobs(engine, [5])
    stale = jobs.claim(engine, "w")
    assert stale is not None and stale.attempts == 1
    jobs.start_training(engine, job_id, "w", total_steps=10, attempt=1)
    assert jobs.requeue_stale(engine, timedelta(seconds=0)) == [job_id]  # a missed heartbeat
    fresh = jobs.claim(engine, "w")  # the same worker name claims it again
    assert fresh is not None and fresh.attempts == 2
    written = len(_events(engine, job_id))

    beat = jobs.heartbeat(engine, job_id, "w", step=7, attempt=1)
    assert not beat.owned
    refused = [
        lambda: jobs.start_training(engine, job_id, "w", total_steps=10, attempt=1),
        lambda: jobs.report_progress(engine, job_id, "w", attempt=1, step=3),
        lambda: jobs.add_checkpoint(
            engine, job_id, "w", Checkpoint(job_id=job_id, step=5, path="x"), attempt=1
        ),
        lambda: jobs.finish_training(engine, job_id, "w", jobs.utcnow(), attempt=1),
        lambda: jobs.fail(engine, job_id, "w", "boom", attempt=1),
        lambda: jobs.confirm_cancelled(engine, job_id, "w", attempt=1),
    ]
    for write in refused:
        with pytest.raises(jobs.NotYourJob):
            write()
    assert len(_events(engine, job_id)) == written, "the stale claim wrote no event"
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.state, job.step, job.attempts) == (JobState.PREPARING, 0, 2)
        assert session.exec(select(Checkpoint).where(Checkpoint.job_id == job_id)).all() == []
    assert jobs.heartbeat(engine, job_id, "w", attempt=2).owned
    jobs.start_training(engine, job_id, "w", total_steps=10, attempt=2)
