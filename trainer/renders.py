"""The worker's side of render requests (`/generate`, `/iterate start`, `/compare`): each runs
under a lease with a heartbeat, like a training job, so a worker that dies mid-render leaves a
request that is requeued (`storage.requests.requeue_stale`), and a worker whose lease was taken
over writes nothing."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from storage import requests
from storage.worktime import Claimed

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
            worker.run_generation(claimed.row, lease)
        elif claimed.kind == "iteration":
            iterate.run_iteration(worker, claimed.row, lease)
        else:
            iterate.run_comparison(worker, claimed.row, lease)
    finally:
        beat.stop()
