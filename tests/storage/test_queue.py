"""The job queue on real databases: atomic claims, fairness, heartbeats, cancel, transitions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from storage import jobs
from storage.db import session_scope
from storage.events import EventKind
from storage.models import Checkpoint, Event, Job
from storage.states import IllegalTransition, JobState
from tests.storage.helpers import make_jobs

CLAIMER = """
import sys, time
from storage.db import make_engine
from storage.jobs import claim
engine = make_engine(sys.argv[1])
while True:
    job = claim(engine, sys.argv[2])
    if job is None:
        break
    print(job.id, flush=True)
"""


def _events(engine: Engine, job_id: int) -> list[str]:
    with session_scope(engine) as session:
        rows = session.exec(
            select(Event).where(Event.job_id == job_id).order_by(col(Event.id))
        ).all()
        return [event.kind for event in rows]


def test_claim_race_gives_each_job_to_exactly_one_worker(engine: Engine, db_url: str) -> None:
    ids = make_jobs(engine, [i % 7 for i in range(60)])
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, db_url, f"w{n}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    claimed: list[int] = []
    for worker in workers:
        out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0
        claimed += [int(line) for line in out.split()]
    assert sorted(claimed) == sorted(ids)
    with session_scope(engine) as session:
        states = {job.state for job in session.exec(select(Job)).all()}
        assert states == {JobState.PREPARING}


def test_claim_is_fair_between_members(engine: Engine) -> None:
    ids = make_jobs(engine, [1] * 10 + [2])
    first = jobs.claim(engine, "w")
    second = jobs.claim(engine, "w")
    assert first is not None and second is not None
    assert first.id == ids[0]
    assert second.id == ids[-1], "member 2's only job must not wait behind member 1's ten"


def test_claim_writes_state_and_event_together(engine: Engine) -> None:
    (job_id,) = make_jobs(engine, [5])
    job = jobs.claim(engine, "w1")
    assert job is not None and job.worker_id == "w1" and job.attempts == 1
    assert _events(engine, job_id) == [EventKind.QUEUED, EventKind.STARTED]
    assert jobs.claim(engine, "w2") is None


def test_illegal_transitions_raise(engine: Engine) -> None:
    (job_id,) = make_jobs(engine, [5])
    with pytest.raises(IllegalTransition), session_scope(engine) as session:
        job = jobs.get_job(session, job_id)
        jobs.transition(session, job, JobState.FINALIZED)
    with session_scope(engine) as session:
        assert jobs.get_job(session, job_id).state == JobState.QUEUED
    assert _events(engine, job_id) == [EventKind.QUEUED], "a refused move writes no event"


def test_cancel_queued_job_is_immediate(engine: Engine) -> None:
    (job_id,) = make_jobs(engine, [5])
    job = jobs.request_cancel(engine, job_id, by_user=5)
    assert job.state == JobState.CANCELLED
    assert jobs.claim(engine, "w") is None


def test_cancel_running_job_is_seen_by_the_worker(engine: Engine) -> None:
    (job_id,) = make_jobs(engine, [5])
    jobs.claim(engine, "w")
    jobs.start_training(engine, job_id, "w", total_steps=10)
    assert jobs.heartbeat(engine, job_id, "w").cancel_requested_by is None
    jobs.request_cancel(engine, job_id, by_user=9)
    beat = jobs.heartbeat(engine, job_id, "w", step=3)
    assert beat.owned and beat.cancel_requested_by == 9
    jobs.confirm_cancelled(engine, job_id, "w")
    assert _events(engine, job_id)[-1] == JobState.CANCELLED


def test_requeue_keeps_resume_point_and_old_worker_loses_the_job(engine: Engine) -> None:
    (job_id,) = make_jobs(engine, [5])
    jobs.claim(engine, "w-old")
    jobs.start_training(engine, job_id, "w-old", total_steps=10)
    jobs.add_checkpoint(
        engine, job_id, "w-old", Checkpoint(job_id=job_id, step=4, path="a", state_path="s4")
    )
    requeued = jobs.requeue_stale(engine, timedelta(seconds=0))
    assert requeued == [job_id]
    with session_scope(engine) as session:
        job = jobs.get_job(session, job_id)
        assert (job.state, job.resume_path, job.step) == (JobState.QUEUED, "s4", 4)
    assert not jobs.heartbeat(engine, job_id, "w-old").owned
    with pytest.raises(jobs.NotYourJob):
        jobs.report_progress(engine, job_id, "w-old", step=5)


HEARTBEATER = """
import sys, time
from storage.db import make_engine
from storage.jobs import claim, start_training, add_checkpoint, heartbeat
from storage.models import Checkpoint
engine = make_engine(sys.argv[1])
job = claim(engine, "doomed")
start_training(engine, job.id, "doomed", total_steps=100)
add_checkpoint(engine, job.id, "doomed", Checkpoint(job_id=job.id, step=20, path="c20",
               state_path="state-20"))
print("ready", flush=True)
while True:
    heartbeat(engine, job.id, "doomed", step=25)
    time.sleep(0.05)
"""


def test_sigkilled_worker_job_is_requeued_after_heartbeat_timeout(
    engine: Engine, db_url: str
) -> None:
    (job_id,) = make_jobs(engine, [5])
    proc = subprocess.Popen(
        [sys.executable, "-c", HEARTBEATER, db_url], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    assert jobs.requeue_stale(engine, timedelta(seconds=1)) == [], "alive: not requeued"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.2)
    assert jobs.requeue_stale(engine, timedelta(seconds=1)) == [job_id]
    again = jobs.claim(engine, "w-new")
    assert again is not None and again.id == job_id
    assert (again.resume_path, again.attempts) == ("state-20", 2)
    assert EventKind.REQUEUED in _events(engine, job_id)


def test_failed_job_can_be_retried_from_its_checkpoint(engine: Engine) -> None:
    (job_id,) = make_jobs(engine, [5])
    jobs.claim(engine, "w")
    jobs.start_training(engine, job_id, "w", total_steps=10)
    jobs.add_checkpoint(
        engine, job_id, "w", Checkpoint(job_id=job_id, step=5, path="p", state_path="s5")
    )
    jobs.fail(engine, job_id, "w", "out of memory")
    retried = jobs.retry(engine, job_id, by_user=5)
    assert (retried.state, retried.resume_path, retried.error) == (JobState.QUEUED, "s5", None)
