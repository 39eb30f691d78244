"""`atelier serve`: the bot and one worker per visible GPU (one on CPU) as supervised children.

A crashed child is restarted with exponential backoff. SIGTERM / Ctrl-C stops the bot's intake
and asks each worker to stop at its next step; a worker then puts its job back in the queue to
resume from its newest checkpoint.

Several hosts may share one database and one data folder: `serve --no-bot` runs workers only and
takes no lock; each worker's id names its host, this process and its index, so no two workers
anywhere share one. What must be single is the bot (one per data folder: its outbox, votes and
link server), so `serve` with the bot holds `bot.lock` and a second one is refused.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from atelier.settings import AtelierSettings, get_settings

log = logging.getLogger("atelier.serve")

MAX_BACKOFF_SECONDS = 60.0
HEALTHY_AFTER_SECONDS = 30.0
STOP_GRACE_SECONDS = 120.0


class AlreadyServing(RuntimeError):
    """Another `atelier serve` runs the bot on this data folder."""


@dataclass
class Child:
    """One supervised process and its restart bookkeeping."""

    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float = 0.0
    pids: list[int] = field(default_factory=list)

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, env=self.env)
        self.started_at = time.monotonic()
        self.pids.append(self.process.pid)
        log.info("%s: started (pid %s)", self.name, self.process.pid)

    def backoff(self) -> float:
        return min(MAX_BACKOFF_SECONDS, 2.0 ** max(0, self.failures - 1))


def lock_data_folder(data_dir: Path) -> IO[str]:
    """Hold the data folder's bot lock for as long as the returned file stays open."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / "bot.lock", "a+")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise AlreadyServing(
            f"another `atelier serve` is already running the bot on {data_dir.resolve()}"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def visible_gpus() -> list[str]:
    """GPU indices from CUDA_VISIBLE_DEVICES or nvidia-smi, without importing torch."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return [str(i) for i, line in enumerate(listing.stdout.splitlines()) if line.startswith("GPU")]


def worker_id(index: int) -> str:
    """Unique across hosts and processes: host name, this `serve`'s pid, the worker's index."""
    return f"{socket.gethostname()}:{os.getpid()}-{index}"


def plan_children(settings: AtelierSettings, with_bot: bool, workers: int | None) -> list[Child]:
    atelier = [sys.executable, "-m", "atelier.cli"]
    children = []
    if with_bot:
        children.append(Child("bot", [*atelier, "bot"], dict(os.environ)))
    gpus = visible_gpus()
    count = workers or max(1, len(gpus))
    for index in range(count):
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
        children.append(
            Child(f"worker-{index}", [*atelier, "worker", "--id", worker_id(index)], env)
        )
    return children


class Supervisor:
    """Keeps the children running until asked to stop."""

    def __init__(self, children: list[Child], poll_seconds: float = 0.5) -> None:
        self.children = children
        self.poll_seconds = poll_seconds
        self.stopping = False

    def run(self) -> int:
        for child in self.children:
            child.start()
        while not self.stopping:
            self._check_children()
            time.sleep(self.poll_seconds)
        return self._stop_all()

    def _check_children(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.process is None:
                if now >= child.restart_at:
                    child.start()
                continue
            code = child.process.poll()
            if code is None:
                if now - child.started_at > HEALTHY_AFTER_SECONDS:
                    child.failures = 0
                continue
            child.failures += 1
            child.process = None
            child.restart_at = now + child.backoff()
            log.error("%s: exited with %s; restarting in %.0f s", child.name, code, child.backoff())

    def _stop_all(self) -> int:
        running = [c.process for c in self.children if c.process and c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("pid %s did not stop in time; killing it", process.pid)
                process.kill()
        log.info("all children stopped")
        return 0


def serve_cli(argv: list[str]) -> int:
    from storage.logs import configure_logging

    parser = argparse.ArgumentParser(prog="atelier serve", description=__doc__)
    parser.add_argument("--no-bot", action="store_true", help="workers only (extra GPU hosts)")
    parser.add_argument("--workers", type=int, default=None, help="default: one per GPU")
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level, settings=settings)
    if not args.no_bot and settings.discord_token is None:
        print(
            "error: DISCORD_TOKEN is not set; set it, or try everything offline with "
            "`atelier demo`",
            file=sys.stderr,
        )
        return 2
    try:
        lock = None if args.no_bot else lock_data_folder(settings.data_dir)
    except AlreadyServing as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    supervisor = Supervisor(plan_children(settings, not args.no_bot, args.workers))

    def _stop(*_: object) -> None:
        supervisor.stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        return supervisor.run()
    finally:
        if lock is not None:
            lock.close()
