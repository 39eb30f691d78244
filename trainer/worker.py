"""The worker: claims jobs from the database, trains them, and reports through the outbox.

It never talks to Discord. A heartbeat thread keeps the job alive while a long step or a
validation grid runs; the same thread learns of a cancel request, which the training loop sees
through `should_stop` before its next step. On SIGTERM the worker stops the current job at the
next step and puts it back in the queue, to resume from its newest checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy.engine import Engine

from storage import jobs, requests
from storage.db import make_engine, session_scope
from storage.migrate import ensure_schema
from storage.models import Checkpoint, Dataset, GuildSettings, Job, utcnow
from storage.states import JobState
from storage.worktime import claim_next
from trainer.callbacks import CheckpointInfo, Progress, TrainCallbacks, TrainingFailed, TrainResult
from trainer.config import TrainConfig
from trainer.render_pipeline import describe_crash, resolve_device
from trainer.settings import TrainerSettings
from trainer.warm_base import WarmBase

log = logging.getLogger(__name__)


@dataclass
class JobControl:
    """What the heartbeat thread learned, read by the loop between steps."""

    cancel_requested_by: int | None = None
    lost: bool = False
    shutdown: threading.Event = field(default_factory=threading.Event)

    @property
    def stop(self) -> bool:
        return self.cancel_requested_by is not None or self.lost or self.shutdown.is_set()


class DatabaseCallbacks(TrainCallbacks):
    """Turns the loop's reports into job updates and outbox events."""

    def __init__(
        self,
        engine: Engine,
        job_id: int,
        worker_id: str,
        control: JobControl,
        every: float,
        attempt: int | None = None,
    ) -> None:
        self.engine, self.job_id, self.worker_id = engine, job_id, worker_id
        self.attempt = attempt  # the claim's fencing token: a requeued claim writes nothing
        self.control = control
        self.every = every
        self._last_progress = 0.0
        self._nan = 0

    def on_start(self, step: int, total: int) -> None:
        jobs.start_training(
            self.engine,
            self.job_id,
            self.worker_id,
            total_steps=total,
            resumed_from=step,
            attempt=self.attempt,
        )
        log.info("job %s: training from step %s of %s", self.job_id, step, total)

    def on_resumed(self, checkpoints: list[CheckpointInfo]) -> None:
        recorded = jobs.checkpoint_steps(self.engine, self.job_id)
        for info in checkpoints:
            if info.step not in recorded and info.file.is_file():
                log.warning("job %s: recording checkpoint %s found on disk", self.job_id, info.step)
                self.on_checkpoint(info)

    def on_progress(self, progress: Progress) -> None:
        now = time.monotonic()
        if now - self._last_progress < self.every and progress.step < progress.total:
            return
        self._last_progress = now
        jobs.report_progress(
            self.engine,
            self.job_id,
            self.worker_id,
            attempt=self.attempt,
            step=progress.step,
            total=progress.total,
            loss=round(progress.loss, 5),
            steps_per_second=round(progress.steps_per_second, 3),
            eta_seconds=round(progress.eta_seconds, 1),
            nan_skipped=self._nan,
        )

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        checkpoint = Checkpoint(
            job_id=self.job_id,
            step=info.step,
            path=str(info.file),
            grid_path=str(info.grid_path) if info.grid_path else None,
            state_path=str(info.state_path) if info.state_path else None,
            loss=info.loss,
        )
        jobs.add_checkpoint(
            self.engine,
            self.job_id,
            self.worker_id,
            checkpoint,
            attempt=self.attempt,
            heldout_loss=_finite(info.heldout_loss),
            leakage=_finite(info.leakage),
        )
        log.info("job %s: checkpoint at step %s (%s)", self.job_id, info.step, info.file.name)

    def on_nan_skipped(self, step: int, count: int) -> None:
        self._nan += 1
        log.warning(
            "job %s: step %s skipped, loss not finite (%s in a row)", self.job_id, step, count
        )

    def should_stop(self) -> bool:
        return self.control.stop

    def keep_progress_on_stop(self) -> bool:
        return self.control.shutdown.is_set() and self.control.cancel_requested_by is None


class Heartbeat(threading.Thread):
    """Beats every `interval` seconds until stopped; records cancel requests and lost jobs."""

    def __init__(
        self,
        engine: Engine,
        job_id: int,
        worker_id: str,
        control: JobControl,
        interval: float,
        attempt: int | None = None,
    ) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.engine, self.job_id, self.worker_id = engine, job_id, worker_id
        self.control, self.interval, self.attempt = control, interval, attempt
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        try:
            beat = jobs.heartbeat(self.engine, self.job_id, self.worker_id, attempt=self.attempt)
        except Exception:  # a database hiccup must not kill training; next beat retries
            log.warning("job %s: heartbeat failed", self.job_id, exc_info=True)
            return
        self.control.cancel_requested_by = beat.cancel_requested_by
        self.control.lost = not beat.owned

    def stop(self) -> None:
        self._done.set()


def _finite(value: float | None) -> float | None:
    """A loss for an event payload: JSON has no NaN, so a non-finite loss is None."""
    return round(value, 6) if value is not None and math.isfinite(value) else None


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Worker:
    """Claims and runs jobs one at a time."""

    def __init__(
        self, settings: TrainerSettings, engine: Engine, worker_id: str | None = None
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.worker_id = worker_id or default_worker_id()
        self.shutdown = threading.Event()
        self._last_sweep = -math.inf
        self.warm_base = WarmBase()  # the base model renders share, kept loaded between them

    def requeue_stale(self) -> None:
        stale = timedelta(seconds=self.settings.worker.stale_after_seconds)
        for job_id in jobs.requeue_stale(self.engine, stale):
            log.warning("job %s: its worker stopped heart-beating; requeued", job_id)
        for kind, row_id, outcome in requests.requeue_stale(self.engine, stale):
            log.warning("%s %s: its worker stopped heart-beating; %s", kind, row_id, outcome)

    def run_once(self) -> bool:
        """Claim the fairest waiting work — a training job or a render request (`/generate`,
        `/iterate start`, `/compare`), one round-robin between members — and run it; False
        when there was nothing to do."""
        self.requeue_stale()
        if not self.maintain():
            return False
        claimed = claim_next(self.engine, self.worker_id)
        if claimed is None:
            return False
        row = claimed.row
        log.info(
            "%s %s: claimed by %s (attempt %s)", claimed.kind, row.id, self.worker_id, row.attempts
        )
        if claimed.kind == "job":
            self.run_job(row)
        else:
            from trainer.renders import run_render

            run_render(self, claimed)
        return True

    def maintain(self) -> bool:
        """The retention sweep (at start, then hourly) and the disk guard: False while the disk
        is too full to take new work (logged once per hour, nothing claimed)."""
        from storage import retention

        now = time.monotonic()
        due = now - self._last_sweep >= retention.SWEEP_EVERY_SECONDS
        if due:
            self._last_sweep = now
            try:
                retention.sweep(self.engine, self.settings)
            except Exception:  # never stop training over housekeeping
                log.warning("retention sweep failed", exc_info=True)
        try:
            retention.require_free_space(self.settings)
        except retention.DiskFull as error:
            if due:
                log.error("not claiming work: %s", error)
            return False
        return True

    def run_forever(self) -> None:
        while not self.shutdown.is_set():
            if not self.run_once():
                self.shutdown.wait(self.settings.worker.poll_seconds)

    def run_job(self, job: Job) -> None:
        assert job.id is not None
        control = JobControl(shutdown=self.shutdown)
        heartbeat = Heartbeat(
            self.engine,
            job.id,
            self.worker_id,
            control,
            self.settings.worker.heartbeat_seconds,
            attempt=job.attempts,
        )
        heartbeat.start()
        started = time.monotonic()
        self.warm_base.drop()  # training needs the memory the renders' base holds
        try:
            result = self._train(job, control)
            self._conclude(job, control, result)
        except TrainingFailed as error:
            self._fail(job, error.reason)
        except jobs.NotYourJob:
            log.warning("job %s: taken over by another worker; stopping", job.id)
        except Exception as error:  # the member gets a sentence; the operator the traceback
            log.exception("job %s: crashed", job.id)
            self._fail(job, describe_crash(error))
        finally:
            heartbeat.stop()
            log.info("job %s: worker done after %.1f s", job.id, time.monotonic() - started)

    def _train(self, job: Job, control: JobControl) -> TrainResult:
        from trainer.loop import train  # torch loads here, not at import

        # base_model stays the catalogue name: the loop resolves it with these settings (the
        # configured architecture kept), and the delivered files name it, never a host path
        config, dataset_dir = self._job_inputs(job)
        callbacks = DatabaseCallbacks(
            self.engine,
            job.id,
            self.worker_id,
            control,
            self.settings.worker.progress_event_seconds,
            attempt=job.attempts,
        )  # type: ignore[arg-type]
        return train(
            config,
            dataset_dir,
            self.settings.jobs_dir / str(job.id),
            callbacks,
            resume=True,
            device=resolve_device(self.settings.worker.device),
            cache_dir=self.settings.cache_dir,
            settings=self.settings,
        )

    def _job_inputs(self, job: Job) -> tuple[TrainConfig, Path]:
        try:
            config = TrainConfig.model_validate(job.config)
        except ValidationError as error:
            raise TrainingFailed(
                f"the job's settings are invalid: {error.errors()[0]['msg']}"
            ) from None
        with session_scope(self.engine) as session:
            dataset = session.get(Dataset, job.dataset_id)
        if dataset is None or not Path(dataset.path).is_dir():
            raise TrainingFailed("the job's dataset is missing from the data folder")
        return config, Path(dataset.path)

    def _conclude(self, job: Job, control: JobControl, result: TrainResult) -> None:
        assert job.id is not None
        if result.status == "completed":
            jobs.finish_training(
                self.engine,
                job.id,
                self.worker_id,
                utcnow() + timedelta(hours=self.vote_window_hours(job.guild_id)),
                attempt=job.attempts,
                comparison_grid=str(result.comparison_grid) if result.comparison_grid else None,
                loss_curve=str(result.loss_curve) if result.loss_curve else None,
                seconds=round(result.seconds, 1),
                steps_per_second=round(result.steps_per_second, 3),
                nan_skipped=result.nan_skipped,
                overfit_after=result.overfit_after,
                suggested_step=result.suggested_step,
                heldout_losses=[
                    [step, round(loss, 6)]
                    for step, loss in result.heldout_losses
                    if math.isfinite(loss)
                ],
            )
        elif control.lost:
            log.warning("job %s: no longer ours; left to its new worker", job.id)
        elif control.cancel_requested_by is not None:
            jobs.confirm_cancelled(self.engine, job.id, self.worker_id, attempt=job.attempts)
        else:
            self._requeue_for_shutdown(job)

    def _requeue_for_shutdown(self, job: Job) -> None:
        with session_scope(self.engine) as session:
            current = jobs.owned_job(session, job.id, self.worker_id, job.attempts)  # type: ignore[arg-type]
            jobs.transition(
                session,
                current,
                JobState.QUEUED,
                "requeued",
                reason="worker restarting",
                step=current.step,
            )
        log.info("job %s: requeued for shutdown at step %s", job.id, job.step)

    def vote_window_hours(self, guild_id: int | None) -> float:
        """The guild's vote window (`/atelier settings`), else the configured default."""
        with session_scope(self.engine) as session:
            guild = session.get(GuildSettings, guild_id) if guild_id else None
        if guild is not None and guild.vote_window_hours:
            return guild.vote_window_hours
        return self.settings.vote_window_hours

    def _fail(self, job: Job, reason: str) -> None:
        log.error("job %s: failed: %s", job.id, reason)
        try:
            jobs.fail(self.engine, job.id, self.worker_id, reason, attempt=job.attempts)  # type: ignore[arg-type]
        except jobs.NotYourJob:
            log.warning("job %s: not failing it; another worker holds it", job.id)


def worker_cli(argv: list[str], load_settings: Callable[[], TrainerSettings]) -> int:
    """`atelier worker [--once] [--id NAME]`, with the settings `load_settings` builds (the entry
    point's composed settings)."""
    from storage.logs import configure_logging

    parser = argparse.ArgumentParser(prog="atelier worker", description="Run one trainer worker.")
    parser.add_argument("--once", action="store_true", help="run at most one job, then exit")
    parser.add_argument("--until-idle", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--id", default=None, help="worker name (default host:pid)")
    args = parser.parse_args(argv)
    settings = load_settings()
    configure_logging(settings.log_level, settings=settings)
    engine = make_engine(settings.db_url)
    ensure_schema(engine)
    worker = Worker(settings, engine, args.id)
    signal.signal(signal.SIGTERM, lambda *_: worker.shutdown.set())
    signal.signal(signal.SIGINT, lambda *_: worker.shutdown.set())
    log.info("worker %s: started on %s", worker.worker_id, resolve_device(settings.worker.device))
    if args.once:
        worker.run_once()
    elif args.until_idle:
        while not worker.shutdown.is_set() and worker.run_once():
            pass
    else:
        worker.run_forever()
    return 0
