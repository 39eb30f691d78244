"""The worker on a real database with real training of the tiny model."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from atelier.settings import AtelierSettings, load_settings
from storage import jobs
from storage.datasets import record_dataset
from storage.db import make_engine, session_scope
from storage.ingest import IngestOptions, ingest_zip
from storage.migrate import upgrade
from storage.models import Checkpoint, Event, Job, utcnow
from storage.states import JobState
from tests.datasets import write_dataset_zip
from trainer.presets import apply_preset
from trainer.worker import Worker

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(tmp_path: Path) -> AtelierSettings:
    return load_settings(
        data_dir=tmp_path / "data",
        worker={"heartbeat_seconds": 0.2, "stale_after_seconds": 30, "progress_event_seconds": 0},
    )


@pytest.fixture
def engine(settings: AtelierSettings) -> Engine:
    engine = make_engine(settings.db_url)
    upgrade(engine)
    return engine


def _enqueue(settings: AtelierSettings, engine: Engine, tmp_path: Path, **overrides: object) -> int:
    zip_path = write_dataset_zip(tmp_path / "data.zip", count=4, size=64)
    result = ingest_zip(
        zip_path, settings.datasets_dir, IngestOptions(trigger="tkxw"), settings.limits
    )
    config = apply_preset("quick-test", "lora", trigger="tkxw", **overrides)
    with session_scope(engine) as session:
        dataset = record_dataset(session, result)
        job = jobs.enqueue(
            session,
            Job(
                owner_id=1,
                name="t",
                method="lora",
                base_model="tiny",
                dataset_id=dataset.id,
                config=config.model_dump(mode="json"),
            ),
        )
        return job.id  # type: ignore[return-value]


def _kinds(engine: Engine, job_id: int) -> list[str]:
    with session_scope(engine) as session:
        rows = session.exec(select(Event).where(Event.job_id == job_id).order_by(col(Event.id)))
        return [e.kind for e in rows.all()]


def test_worker_trains_a_job_to_awaiting_vote(
    settings: AtelierSettings, engine: Engine, tmp_path: Path
) -> None:
    job_id = _enqueue(settings, engine, tmp_path, steps=20, checkpoint_every=10)
    assert Worker(settings, engine, "w1").run_once()
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        assert job.state == JobState.AWAITING_VOTE and job.vote_deadline is not None
        checkpoints = session.exec(select(Checkpoint).where(Checkpoint.job_id == job_id)).all()
    assert [c.step for c in checkpoints] == [10, 20]
    for checkpoint in checkpoints:
        assert Path(checkpoint.path).is_file() and Path(checkpoint.grid_path).is_file()
    kinds = _kinds(engine, job_id)
    assert kinds[:3] == ["queued", "started", "training"]
    assert kinds.count("checkpoint_ready") == 2 and kinds[-1] == "training_done"
    assert "progress" in kinds
    assert not Worker(settings, engine, "w1").run_once(), "queue is empty now"


def test_cancel_is_seen_within_a_step(
    settings: AtelierSettings, engine: Engine, tmp_path: Path
) -> None:
    job_id = _enqueue(settings, engine, tmp_path, steps=400, checkpoint_every=400)

    def cancel_when_training() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with session_scope(engine) as session:
                job = session.get(Job, job_id)
                if job.state == JobState.TRAINING and job.step >= 2:
                    break
            time.sleep(0.05)
        jobs.request_cancel(engine, job_id, by_user=99)

    canceller = threading.Thread(target=cancel_when_training)
    canceller.start()
    Worker(settings, engine, "w1").run_once()
    canceller.join()
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        assert job.state == JobState.CANCELLED and job.step < 400
    assert _kinds(engine, job_id)[-1] == "cancelled"


def test_missing_dataset_fails_with_a_clear_reason(
    settings: AtelierSettings, engine: Engine, tmp_path: Path
) -> None:
    job_id = _enqueue(settings, engine, tmp_path, steps=20, checkpoint_every=10)
    import shutil

    shutil.rmtree(settings.datasets_dir)
    Worker(settings, engine, "w1").run_once()
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        assert job.state == JobState.FAILED
        assert job.error == "the job's dataset is missing from the data folder"


def test_generation_request_is_rendered_with_the_trained_model(
    settings: AtelierSettings, engine: Engine, tmp_path: Path
) -> None:
    from PIL import Image

    from storage.generations import request_generation

    job_id = _enqueue(settings, engine, tmp_path, steps=10, checkpoint_every=10)
    worker = Worker(settings, engine, "w1")
    worker.run_once()
    with session_scope(engine) as session:
        (checkpoint,) = session.exec(select(Checkpoint).where(Checkpoint.job_id == job_id)).all()
        request = request_generation(
            session,
            guild_id=1,
            channel_id=2,
            user_id=3,
            checkpoint_id=checkpoint.id,
            prompt="tkxw on a beach",
            weight=0.8,
            seed=4,
        )
        again = [
            request_generation(
                session, guild_id=1, channel_id=2, user_id=3, checkpoint_id=checkpoint.id,
                prompt="tkxw on a beach", weight=0.8, seed=seed,
            )
            for seed in (4, 5)
        ]  # fmt: skip
    for _ in range(3):
        assert worker.run_once()
    with session_scope(engine) as session:
        done = [session.get(type(request), r.id) for r in (request, *again)]
        assert [d.state for d in done] == ["done"] * 3
        images = [Image.open(d.image_path).convert("RGB") for d in done]
        assert images[0].size == (64, 64)
    # the request's seed decides the image: same seed, same pixels; another seed, others
    assert images[0].tobytes() == images[1].tobytes() != images[2].tobytes()
    assert _kinds(engine, job_id)[-1] == "generated"
    # one base model kept warm for the worker's renders: three requests, one load
    assert worker.warm_base.loads == 1 and worker.warm_base.warm
    # training takes the memory back; the next render loads the base again
    _enqueue(settings, engine, tmp_path, steps=2, checkpoint_every=2)
    assert worker.run_once() and not worker.warm_base.warm
    with session_scope(engine) as session:
        last = request_generation(
            session, guild_id=1, channel_id=2, user_id=3, checkpoint_id=checkpoint.id,
            prompt="tkxw on a beach", weight=0.8, seed=4,
        )  # fmt: skip
    assert worker.run_once()
    with session_scope(engine) as session:
        path = session.get(type(last), last.id).image_path
    assert Image.open(path).convert("RGB").tobytes() == images[0].tobytes()
    assert worker.warm_base.loads == 2


def test_shutdown_saves_progress_requeues_and_the_next_worker_resumes(
    settings: AtelierSettings, engine: Engine, tmp_path: Path
) -> None:
    job_id = _enqueue(settings, engine, tmp_path, steps=40, checkpoint_every=40)
    first = Worker(settings, engine, "w-old")
    runner = threading.Thread(target=first.run_once)
    runner.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with session_scope(engine) as session:
            if session.get(Job, job_id).step >= 3:
                break
        time.sleep(0.02)
    first.shutdown.set()
    runner.join(60)
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        stopped_at = job.step
        assert job.state == JobState.QUEUED and job.worker_id is None
        requeued = session.exec(
            select(Event).where(Event.job_id == job_id, Event.kind == "requeued")
        ).one()
    assert requeued.payload["reason"] == "worker restarting"
    assert 3 <= stopped_at < 40
    saved = sorted((settings.jobs_dir / str(job_id) / "state").glob("step-*"))
    assert saved and saved[-1].name == f"step-{stopped_at:08d}"

    assert Worker(settings, engine, "w-new").run_once()
    with session_scope(engine) as session:
        assert session.get(Job, job_id).state == JobState.AWAITING_VOTE
        resumed = session.exec(
            select(Event)
            .where(Event.job_id == job_id, Event.kind == "training")
            .order_by(col(Event.id).desc())
        ).first()
    assert resumed.payload["resumed_from"] == stopped_at


def test_resumed_job_records_checkpoints_saved_but_never_recorded(
    settings: AtelierSettings, engine: Engine, tmp_path: Path
) -> None:
    """A worker dies after saving step 4's state and before recording it: the next worker
    resumes and records step 4 (once), so the team can vote on it."""
    job_id = _enqueue(settings, engine, tmp_path, steps=6, checkpoint_every=2)
    assert Worker(settings, engine, "w-old").run_once()
    with session_scope(engine) as session:
        lost = session.exec(
            select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.step == 4)
        ).one()
        for event in session.exec(select(Event).where(Event.job_id == job_id)).all():
            if event.kind == "checkpoint_ready" and event.payload["step"] == 4:
                session.delete(event)
        session.delete(lost)
        job = session.get(Job, job_id)
        job.state, job.worker_id = JobState.TRAINING, "w-old"
        job.heartbeat_at = utcnow() - timedelta(hours=1)
    assert jobs.requeue_stale(engine, timedelta(seconds=30)) == [job_id]
    assert Worker(settings, engine, "w-new").run_once()
    with session_scope(engine) as session:
        steps = [
            c.step for c in session.exec(select(Checkpoint).where(Checkpoint.job_id == job_id))
        ]
        ready = [
            e.payload["step"]
            for e in session.exec(select(Event).where(Event.job_id == job_id)).all()
            if e.kind == "checkpoint_ready"
        ]
        assert session.get(Job, job_id).state == JobState.AWAITING_VOTE
    assert sorted(steps) == [2, 4, 6]
    assert sorted(ready) == [2, 4, 6]


def test_a_worker_whose_claim_was_requeued_stops_and_writes_nothing(
    settings: AtelierSettings, engine: Engine, tmp_path: Path
) -> None:
    """A missed heartbeat (a database blip) requeues the job and the same worker name claims
    it again: the first claim is fenced off by its attempt number and stops training."""
    job_id = _enqueue(settings, engine, tmp_path, steps=400, checkpoint_every=400)
    stale = Worker(settings, engine, "w1")
    runner = threading.Thread(target=stale.run_once)
    runner.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with session_scope(engine) as session:
            if session.get(Job, job_id).step >= 3:
                break
        time.sleep(0.02)
    # the missed heartbeat: judged a minute ahead, so a beat the running worker writes while
    # the query runs (it beats every step here) cannot make the job look alive
    missed = utcnow() + timedelta(minutes=1)
    assert jobs.requeue_stale(engine, timedelta(seconds=0), now=missed) == [job_id]
    again = jobs.claim(engine, "w1")
    assert again is not None and again.attempts == 2
    with session_scope(engine) as session:
        taken_at = session.get(Job, job_id).step
        last_event = session.exec(select(Event).order_by(col(Event.id).desc())).first().id
    runner.join(60)
    assert not runner.is_alive(), "the fenced-off worker stops training"
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        assert (job.state, job.worker_id, job.attempts) == (JobState.PREPARING, "w1", 2)
        assert job.step == taken_at < 400
        assert session.exec(select(Checkpoint).where(Checkpoint.job_id == job_id)).all() == []
        later = session.exec(select(Event).where(col(Event.id) > last_event)).all()
    assert later == [], "no heartbeat, transition, checkpoint or event from the stale claim"
    assert jobs.heartbeat(engine, job_id, "w1", attempt=2).owned
