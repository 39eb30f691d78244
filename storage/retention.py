"""Retention: what the data folder keeps, the sweep that makes it so, and the disk guard.

- Finalized jobs keep their kept checkpoints; `finalize` deletes the others' files after its
  commit, and the sweep finishes what a crash in between left (`sweep_deleted`).
- Cancelled jobs are final: the sweep deletes their job folder (checkpoints, grids, states).
- Failed jobs keep their folder `limits.failed_job_days` after failing, so `/job retry` resumes
  from the newest checkpoint; then the sweep deletes it (a later retry starts from step 0).
- Temporary files of interrupted writes (a crash, a full disk) older than an hour go.
- New work is refused while the data folder has less than `limits.min_free_disk_gb` free.

The worker runs the sweep when it starts and then hourly (`Worker.maybe_sweep`).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from storage.db import session_scope
from storage.finalize import sweep_deleted
from storage.fsutil import remove_temp_files
from storage.models import Checkpoint, Job, utcnow
from storage.settings import Settings
from storage.states import JobState

log = logging.getLogger(__name__)

SWEEP_EVERY_SECONDS = 3600.0


class DiskFull(RuntimeError):
    """Too little free space for new work; `str(error)` is the one line to show."""


@dataclass(frozen=True)
class SweepReport:
    checkpoints: int
    job_folders: int
    temp_files: int


def free_bytes(settings: Settings) -> int:
    folder = settings.data_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def require_free_space(settings: Settings) -> None:
    """Raise `DiskFull` with one clear line when the data folder is nearly full."""
    need = settings.limits.min_free_disk_gb * 1024**3
    free = free_bytes(settings)
    if free < need:
        raise DiskFull(
            f"The server's disk is nearly full ({free / 1024**3:.1f} GB free, "
            f"{settings.limits.min_free_disk_gb:g} GB needed for new work); "
            "ask an operator to free space."
        )


def _expired_jobs(engine: Engine, settings: Settings, now: datetime) -> list[int]:
    failed_before = now - timedelta(days=settings.limits.failed_job_days)
    with session_scope(engine) as session:
        rows = session.exec(
            select(Job.id, Job.state, Job.finished_at).where(
                col(Job.state).in_([str(JobState.CANCELLED), str(JobState.FAILED)])
            )
        ).all()
    expired = []
    for job_id, state, finished_at in rows:
        if finished_at is not None and finished_at.tzinfo is None:
            finished_at = finished_at.replace(tzinfo=now.tzinfo)
        if state == JobState.CANCELLED or (finished_at is not None and finished_at < failed_before):
            expired.append(int(job_id))
    return expired


def remove_job_files(engine: Engine, settings: Settings, job_id: int) -> bool:
    """Mark the job's checkpoints deleted (commit first), then delete its folder."""
    folder = settings.jobs_dir / str(job_id)
    if not folder.exists():
        return False
    with session_scope(engine) as session:
        for checkpoint in session.exec(select(Checkpoint).where(Checkpoint.job_id == job_id)):
            checkpoint.deleted = True
            session.add(checkpoint)
    shutil.rmtree(folder, ignore_errors=True)
    log.info("job %s: files deleted (retention)", job_id)
    return True


def sweep(engine: Engine, settings: Settings, now: datetime | None = None) -> SweepReport:
    """Make the data folder match the retention rules above; safe to run from every worker."""
    now = now or utcnow()
    checkpoints = sweep_deleted(engine)
    folders = sum(
        remove_job_files(engine, settings, j) for j in _expired_jobs(engine, settings, now)
    )
    temp = remove_temp_files(Path(settings.data_dir))
    if checkpoints or folders or temp:
        log.info(
            "retention sweep: %s checkpoint(s), %s job folder(s), %s temporary file(s) deleted",
            checkpoints, folders, temp,
        )  # fmt: skip
    return SweepReport(checkpoints, folders, temp)
