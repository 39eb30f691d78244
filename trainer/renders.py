"""The worker's side of render requests (`/generate` here, `/iterate start` and `/compare` in
`trainer.iterate`): each runs under a lease with a heartbeat, like a training job, so a worker
that dies mid-render leaves a request that is requeued (`storage.requests.requeue_stale`), and a
worker whose lease was taken over writes nothing. All of them share the worker's warm base."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from storage import requests
from storage.db import session_scope
from storage.generations import complete_generation, fail_generation
from storage.models import Checkpoint, Generation, Job
from storage.worktime import Claimed
from trainer.config import TrainConfig
from trainer.render_pipeline import describe_crash, render_pipeline

if TYPE_CHECKING:
    from trainer.worker import Worker

log = logging.getLogger(__name__)


class RenderBeat(threading.Thread):
    """Beats for one render request every `interval` seconds until stopped."""

    def __init__(self, worker: Worker, claimed: Claimed, lease: requests.Lease) -> None:
        super().__init__(name=f"heartbeat-{claimed.kind}-{claimed.row.id}", daemon=True)
        self.engine, self.claimed, self.lease = worker.engine, claimed, lease
        self.interval = worker.settings.worker.heartbeat_seconds
        self.lost = False
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                owned = requests.beat(
                    self.engine, self.claimed.kind, self.claimed.row.id, self.lease
                )
            except Exception:  # a database hiccup must not kill the render; next beat retries
                log.warning("%s %s: heartbeat failed", self.claimed.kind, self.claimed.row.id)
                continue
            self.lost = self.lost or not owned

    def stop(self) -> None:
        self._done.set()


def run_render(worker: Worker, claimed: Claimed) -> None:
    """Render one claimed request with a heartbeat; its result is written only under its lease."""
    from trainer import iterate

    lease = requests.lease_of(claimed.row)
    beat = RenderBeat(worker, claimed, lease)
    beat.start()
    try:
        if claimed.kind == "generation":
            run_generation(worker, claimed.row, lease)
        elif claimed.kind == "iteration":
            iterate.run_iteration(worker, claimed.row, lease)
        else:
            iterate.run_comparison(worker, claimed.row, lease)
    finally:
        beat.stop()


def run_generation(
    worker: Worker, request: Generation, lease: requests.Lease | None = None
) -> None:
    """Render a claimed `/generate` request; written only while `lease` holds it."""
    started = time.monotonic()
    try:
        path = _render_generation(worker, request)
    except Exception as error:
        log.exception("generation %s: failed", request.id)
        written = fail_generation(
            worker.engine,
            request.id,  # type: ignore[arg-type]
            describe_crash(error),
            lease=lease,
        )
    else:
        written = complete_generation(worker.engine, request.id, str(path), lease=lease)  # type: ignore[arg-type]
        log.info("generation %s: %.1f s", request.id, time.monotonic() - started)
    if not written:
        log.warning("generation %s: another worker holds it now; result dropped", request.id)


def _render_generation(worker: Worker, request: Generation) -> Path:
    from trainer.generate import render

    with session_scope(worker.engine) as session:
        checkpoint = session.get(Checkpoint, request.checkpoint_id)
        job = session.get(Job, checkpoint.job_id) if checkpoint else None
    if checkpoint is None or job is None:
        raise FileNotFoundError(2, "model file missing", checkpoint.path if checkpoint else "")
    config = TrainConfig.model_validate(job.config)
    model_file = Path(checkpoint.path)
    with render_pipeline(
        worker.settings, job.base_model, model_file, request.weight, worker.warm_base
    ) as pipeline:
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
    out = worker.settings.data_dir / "generations" / f"{request.id}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out
