"""Retention does what the README says: the sweep runs (from the worker), unchosen and
cancelled jobs' files go, failed jobs' files stay for the retry window, temporary leftovers go,
and new work is refused with one line before the disk is full."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from atelier.settings import AtelierSettings, load_settings
from bot.errors import LimitReached
from bot.uploads import require_disk_space
from storage import retention
from storage.db import make_engine, session_scope
from storage.finalize import delete_checkpoint_files
from storage.migrate import upgrade
from storage.models import Checkpoint, Job, utcnow
from storage.states import JobState
from tests.storage.helpers import make_jobs


@pytest.fixture
def settings(tmp_path: Path) -> AtelierSettings:
    return load_settings(data_dir=tmp_path / "data")


@pytest.fixture
def db(settings: AtelierSettings) -> Engine:
    engine = make_engine(settings.db_url)
    upgrade(engine)
    return engine


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def _checkpoint(engine: Engine, job_id: int, path: Path, *, deleted: bool = False) -> None:
    with session_scope(engine) as session:
        session.add(Checkpoint(job_id=job_id, step=10, path=str(path), deleted=deleted))


def _set_state(engine: Engine, job_id: int, state: JobState, finished_ago: timedelta) -> None:
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        job.state = state
        job.finished_at = utcnow() - finished_ago
        session.add(job)


def test_sqlite_commits_are_synchronous_full(db: Engine) -> None:
    with db.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_an_embeddings_diffusers_copy_and_step_folder_are_deleted(tmp_path: Path) -> None:
    out = tmp_path / "jobs" / "1" / "checkpoints"
    primary = _touch(out / "cat-step00000010" / "tkxw.safetensors")
    copy = _touch(out / "diffusers" / "cat-step00000010" / "learned_embeds.safetensors")
    other = _touch(out / "cat-step00000020" / "tkxw.safetensors")
    delete_checkpoint_files(Checkpoint(job_id=1, step=10, path=str(primary)))
    assert not copy.parent.exists() and not primary.parent.exists()
    assert other.exists()


def test_a_lora_diffusers_copy_is_deleted(tmp_path: Path) -> None:
    out = tmp_path / "checkpoints"
    primary = _touch(out / "cat-step00000010.safetensors")
    copy = _touch(out / "diffusers" / "cat-step00000010" / "pytorch_lora_weights.safetensors")
    delete_checkpoint_files(Checkpoint(job_id=1, step=10, path=str(primary)))
    assert not primary.exists() and not copy.parent.exists()


def test_the_worker_runs_the_sweep(settings: AtelierSettings, db: Engine) -> None:
    """`sweep_deleted` was promised but never called: a crash after finalize's commit left
    the unchosen files for good."""
    from trainer.worker import Worker

    (job_id,) = make_jobs(db, [1])
    _set_state(db, job_id, JobState.FINALIZED, timedelta(0))
    leftover = _touch(
        settings.jobs_dir / str(job_id) / "checkpoints" / "m-step00000010.safetensors"
    )
    _checkpoint(db, job_id, leftover, deleted=True)
    assert Worker(settings, db, "w1").run_once() is False  # nothing to train, but it swept
    assert not leftover.exists()


def test_cancelled_go_failed_stay_for_the_retry_window(
    settings: AtelierSettings, db: Engine
) -> None:
    cancelled, failed_recent, failed_old = make_jobs(db, [1, 2, 3])
    _set_state(db, cancelled, JobState.CANCELLED, timedelta(0))
    _set_state(db, failed_recent, JobState.FAILED, timedelta(days=1))
    _set_state(db, failed_old, JobState.FAILED, timedelta(days=8))
    folders = {j: _touch(settings.jobs_dir / str(j) / "state" / "x").parent.parent
               for j in (cancelled, failed_recent, failed_old)}  # fmt: skip
    _checkpoint(db, failed_old, folders[failed_old] / "checkpoints" / "a.safetensors")
    report = retention.sweep(db, settings)
    assert report.job_folders == 2
    assert not folders[cancelled].exists() and not folders[failed_old].exists()
    assert folders[failed_recent].exists()
    with session_scope(db) as session:
        assert all(c.deleted for c in session.query(Checkpoint).all())


def test_the_sweep_removes_old_temporary_files(settings: AtelierSettings, db: Engine) -> None:
    old = _touch(settings.jobs_dir / "4" / "checkpoints" / ".m.safetensors-abc.tmp")
    past = time.time() - 7200
    os.utime(old, (past, past))
    assert retention.sweep(db, settings).temp_files == 1
    assert not old.exists()


async def test_new_work_is_refused_with_one_line_when_the_disk_is_nearly_full(
    tmp_path: Path,
) -> None:
    full = load_settings(data_dir=tmp_path / "data", limits={"min_free_disk_gb": 1e9})
    with pytest.raises(LimitReached) as caught:
        await require_disk_space(full)
    assert "disk is nearly full" in str(caught.value) and "\n" not in str(caught.value)
    engine = make_engine(full.db_url)
    upgrade(engine)
    (job_id,) = make_jobs(engine, [1])
    from trainer.worker import Worker

    assert Worker(full, engine, "w1").run_once() is False
    with session_scope(engine) as session:
        assert session.get(Job, job_id).state == JobState.QUEUED  # not claimed
