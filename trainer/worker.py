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
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy.engine import Engine

from storage import jobs
from storage.db import make_engine, session_scope
from storage.generations import claim_generation, complete_generation, fail_generation
from storage.migrate import ensure_schema
from storage.models import Checkpoint, Dataset, Generation, GuildSettings, Job, utcnow
from storage.settings import Settings, get_settings
from storage.states import JobState
from trainer.callbacks import CheckpointInfo, Progress, TrainCallbacks, TrainingFailed, TrainResult
from trainer.config import TrainConfig

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
        self, engine: Engine, job_id: int, worker_id: str, control: JobControl, every: float
    ) -> None:
        self.engine, self.job_id, self.worker_id = engine, job_id, worker_id
        self.control = control
        self.every = every
        self._last_progress = 0.0
        self._nan = 0

    def on_start(self, step: int, total: int) -> None:
        jobs.start_training(
            self.engine, self.job_id, self.worker_id, total_steps=total, resumed_from=step
        )
        log.info("job %s: training from step %s of %s", self.job_id, step, total)

    def on_progress(self, progress: Progress) -> None:
        now = time.monotonic()
        if now - self._last_progress < self.every and progress.step < progress.total:
            return
        self._last_progress = now
        jobs.report_progress(
            self.engine,
            self.job_id,
            self.worker_id,
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
        self, engine: Engine, job_id: int, worker_id: str, control: JobControl, interval: float
    ) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.engine, self.job_id, self.worker_id = engine, job_id, worker_id
        self.control, self.interval = control, interval
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        try:
            beat = jobs.heartbeat(self.engine, self.job_id, self.worker_id)
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

    def __init__(self, settings: Settings, engine: Engine, worker_id: str | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.worker_id = worker_id or default_worker_id()
        self.shutdown = threading.Event()

    def requeue_stale(self) -> None:
        stale = timedelta(seconds=self.settings.worker.stale_after_seconds)
        for job_id in jobs.requeue_stale(self.engine, stale):
            log.warning("job %s: its worker stopped heart-beating; requeued", job_id)

    def run_once(self) -> bool:
        """Render one waiting `/generate` request, or claim and run one training job; False
        when there was nothing to do. Generations go first: they take seconds, jobs hours."""
        self.requeue_stale()
        if self.run_generation():
            return True
        from trainer.iterate import run_pending  # /iterate candidates and /compare grids

        if run_pending(self):
            return True
        job = jobs.claim(self.engine, self.worker_id)
        if job is None:
            return False
        log.info("job %s: claimed by %s (attempt %s)", job.id, self.worker_id, job.attempts)
        self.run_job(job)
        return True

    def run_generation(self) -> bool:
        request = claim_generation(self.engine, self.worker_id)
        if request is None:
            return False
        started = time.monotonic()
        try:
            path = self._render(request)
        except Exception as error:
            log.exception("generation %s: failed", request.id)
            fail_generation(self.engine, request.id, describe_crash(error))  # type: ignore[arg-type]
        else:
            complete_generation(self.engine, request.id, str(path))  # type: ignore[arg-type]
            log.info("generation %s: %.1f s", request.id, time.monotonic() - started)
        return True

    def _render(self, request: Generation) -> Path:
        from trainer.base_models import load_base_model, resolve_base_model
        from trainer.generate import load_for_generation, render

        with session_scope(self.engine) as session:
            checkpoint = session.get(Checkpoint, request.checkpoint_id)
            job = session.get(Job, checkpoint.job_id) if checkpoint else None
        if checkpoint is None or job is None or not Path(checkpoint.path).is_file():
            raise FileNotFoundError(2, "model file missing", checkpoint.path if checkpoint else "")
        config = TrainConfig.model_validate(job.config)
        path, architecture = resolve_base_model(job.base_model, self.settings)
        base = load_base_model(
            path,
            architecture,
            cache_dir=self.settings.cache_dir,
            device=resolve_device(self.settings.worker.device),
        )
        pipeline = load_for_generation(base, Path(checkpoint.path), request.weight)
        image = render(
            pipeline,
            request.prompt,
            seed=request.seed,
            steps=config.validation.steps,
            guidance=config.validation.guidance,
            scheduler=config.validation.scheduler,
            negative_prompt=config.validation.negative_prompt,
            width=config.resolution,
            height=config.resolution,
        )
        out = self.settings.data_dir / "generations" / f"{request.id}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        image.save(out)
        return out

    def run_forever(self) -> None:
        while not self.shutdown.is_set():
            if not self.run_once():
                self.shutdown.wait(self.settings.worker.poll_seconds)

    def run_job(self, job: Job) -> None:
        assert job.id is not None
        control = JobControl(shutdown=self.shutdown)
        heartbeat = Heartbeat(
            self.engine, job.id, self.worker_id, control, self.settings.worker.heartbeat_seconds
        )
        heartbeat.start()
        started = time.monotonic()
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
        from trainer.base_models import resolve_base_model  # torch loads here, not at import
        from trainer.loop import train

        config, dataset_dir = self._job_inputs(job)
        path, _architecture = resolve_base_model(config.base_model, self.settings)
        config = config.model_copy(update={"base_model": path})
        callbacks = DatabaseCallbacks(
            self.engine,
            job.id,
            self.worker_id,
            control,
            self.settings.worker.progress_event_seconds,
        )  # type: ignore[arg-type]
        return train(
            config,
            dataset_dir,
            self.settings.jobs_dir / str(job.id),
            callbacks,
            resume=True,
            device=resolve_device(self.settings.worker.device),
            cache_dir=self.settings.cache_dir,
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
            jobs.confirm_cancelled(self.engine, job.id, self.worker_id)
        else:
            self._requeue_for_shutdown(job)

    def _requeue_for_shutdown(self, job: Job) -> None:
        with session_scope(self.engine) as session:
            current = jobs.owned_job(session, job.id, self.worker_id)  # type: ignore[arg-type]
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
            jobs.fail(self.engine, job.id, self.worker_id, reason)  # type: ignore[arg-type]
        except jobs.NotYourJob:
            log.warning("job %s: not failing it; another worker holds it", job.id)


def describe_crash(error: BaseException) -> str:
    """A sentence a member understands for an unexpected error."""
    text = str(error).lower()
    if "out of memory" in text:
        return "the GPU ran out of memory; try a smaller batch size or resolution"
    if isinstance(error, FileNotFoundError):
        return f"a file the job needs is missing: {Path(str(error.filename)).name}"
    return (
        f"an internal error stopped training ({type(error).__name__}); an operator can see the log"
    )


def resolve_device(setting: str) -> str:
    """'auto' → cuda when visible, else cpu."""
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def worker_cli(argv: list[str]) -> int:
    """`atelier worker [--once] [--id NAME]`."""
    from atelier.cli import configure_logging

    parser = argparse.ArgumentParser(prog="atelier worker", description="Run one trainer worker.")
    parser.add_argument("--once", action="store_true", help="run at most one job, then exit")
    parser.add_argument("--until-idle", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--id", default=None, help="worker name (default host:pid)")
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level)
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
