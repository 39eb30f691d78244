"""Scaling out: two real `atelier worker` processes share one PostgreSQL database."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from atelier.settings import load_settings
from storage import jobs
from storage.datasets import record_dataset
from storage.db import make_engine, session_scope
from storage.ingest import IngestOptions, ingest_zip
from storage.migrate import upgrade
from storage.models import Event, Job
from tests.conftest import POSTGRES_URL, _postgres_database
from tests.datasets import write_dataset_zip
from trainer.presets import apply_preset

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture
def postgres_url() -> str:
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL: set ATELIER_TEST_POSTGRES_URL (.ci/postgres.sh starts one)")
    yield from _postgres_database()


def _enqueue(engine: Engine, data_dir: Path, tmp_path: Path, count: int) -> list[int]:
    settings = load_settings(data_dir=data_dir)
    zip_path = write_dataset_zip(tmp_path / "data.zip", count=4, size=64)
    result = ingest_zip(
        zip_path, settings.datasets_dir, IngestOptions(trigger="tkxw"), settings.limits
    )
    config = apply_preset("quick-test", "lora", trigger="tkxw", steps=6, checkpoint_every=6)
    ids = []
    with session_scope(engine) as session:
        dataset = record_dataset(session, result)
        for owner in range(count):
            job = jobs.enqueue(
                session,
                Job(
                    owner_id=owner,
                    name=f"j{owner}",
                    method="lora",
                    base_model="tiny",
                    dataset_id=dataset.id,
                    config=config.model_dump(mode="json"),
                ),
            )
            ids.append(job.id)
    return ids


def test_two_worker_processes_share_the_queue(postgres_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    engine = make_engine(postgres_url)
    upgrade(engine)
    ids = _enqueue(engine, data_dir, tmp_path, count=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    env.update(
        ATELIER_DATA_DIR=str(data_dir),
        ATELIER_DATABASE_URL=postgres_url,
        ATELIER_WORKER__DEVICE="cpu",
        ATELIER_WORKER__HEARTBEAT_SECONDS="1",
        ATELIER_WORKER__STALE_AFTER_SECONDS="120",
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "atelier.cli", "worker", "--until-idle", "--id", name],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name in ("host-a", "host-b")
    ]
    for worker in workers:
        assert worker.wait(timeout=400) == 0
    with session_scope(engine) as session:
        started = session.exec(select(Event).where(Event.kind == "started")).all()
        done = session.exec(select(Event).where(Event.kind == "training_done")).all()
        states = {job.state for job in session.exec(select(Job)).all()}
    assert sorted(e.job_id for e in started) == sorted(ids), "each job started exactly once"
    assert sorted(e.job_id for e in done) == sorted(ids), "each job trained exactly once"
    per_worker = Counter(e.payload["worker"] for e in started)
    assert set(per_worker) == {"host-a", "host-b"}, per_worker
    assert states == {"awaiting_vote"}
    engine.dispose()


def test_two_serve_hosts_share_one_database_and_one_folder(
    postgres_url: str, tmp_path: Path
) -> None:
    """The README's scale-out recipe: two `atelier serve --no-bot` on one Postgres and one
    shared data folder both run, and their workers have different ids."""
    import signal
    import time

    data_dir = tmp_path / "data"
    engine = make_engine(postgres_url)
    upgrade(engine)
    ids = _enqueue(engine, data_dir, tmp_path, count=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    env.update(
        ATELIER_DATA_DIR=str(data_dir),
        ATELIER_DATABASE_URL=postgres_url,
        ATELIER_WORKER__DEVICE="cpu",
        ATELIER_WORKER__POLL_SECONDS="0.2",
        CUDA_VISIBLE_DEVICES="",
    )
    env.pop("DISCORD_TOKEN", None)
    command = [sys.executable, "-m", "atelier.cli", "serve", "--no-bot", "--workers", "1"]
    hosts = [subprocess.Popen(command, env=env) for _ in range(2)]
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with session_scope(engine) as session:
                claimed = [j.worker_id for j in session.exec(select(Job)).all() if j.worker_id]
            if len(claimed) == 2 or all(h.poll() is not None for h in hosts):
                break
            time.sleep(0.2)
        assert all(h.poll() is None for h in hosts), "a serve host was refused"
        assert len(set(claimed)) == 2, claimed  # one job each, different worker ids
        pids = {str(h.pid) for h in hosts}
        assert {w.rsplit(":", 1)[1].split("-")[0] for w in claimed} == pids
    finally:
        for host in hosts:
            host.send_signal(signal.SIGTERM)
        for host in hosts:
            host.wait(timeout=120)
    with session_scope(engine) as session:
        assert {j.id for j in session.exec(select(Job)).all()} == set(ids)
    engine.dispose()
