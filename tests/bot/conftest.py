"""Fixtures for the bot: settings in a temp folder, a migrated SQLite database, a dataset zip,
and (for end-to-end tests) the Discord emulator with the real bot connected to it."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import sys
import threading
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from atelier.settings import AtelierSettings, load_settings
from storage.db import make_engine
from storage.migrate import upgrade


def make_zip(count: int = 6, side: int = 96) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(count):
            image = Image.new("RGB", (side, side), (40 * i % 255, 90, 200 - 20 * i))
            for x in range(0, side, 8):  # a little structure so images are not duplicates
                for y in range(i, side, 16):
                    image.putpixel((x, y), (255, 255, 255))
            png = io.BytesIO()
            image.save(png, "PNG")
            zf.writestr(f"img{i}.png", png.getvalue())
            zf.writestr(f"img{i}.txt", f"a red figure number {i}")
    return buf.getvalue()


@pytest.fixture
def dataset_zip() -> bytes:
    return make_zip()


@pytest.fixture
def settings(tmp_path: Path) -> AtelierSettings:
    return load_settings(
        data_dir=tmp_path / "data",
        discord={
            "link_port": 0,
            "progress_edit_seconds": 1.0,
            "link_ttl_hours": 1.0,
            "allow_insecure_dataset_urls": True,
        },
        worker={
            "heartbeat_seconds": 1.0,
            "stale_after_seconds": 5.0,
            "poll_seconds": 0.2,
            "progress_event_seconds": 0.2,
            "device": "cpu",
        },
        vote_window_hours=1.0,
        link_secret="test-secret-of-at-least-32-characters",
    )


@pytest.fixture
def bot_engine(settings: AtelierSettings) -> Iterator[Engine]:
    engine = make_engine(settings.db_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
async def emu() -> AsyncIterator[Any]:
    from discord_emulator import DiscordEmulator

    async with DiscordEmulator() as emulator:
        yield emulator


async def start_bot(emu: Any, settings: AtelierSettings, engine: Engine) -> Any:
    from bot.client import run_bot

    settings = settings.model_copy(update={"discord_token": _secret(emu.token)})
    bot = await run_bot(settings, engine)
    bot.notifier.poll_seconds = 0.1
    bot.notifier.retry_base_seconds = 0.3
    bot.voting.check_seconds = 0.3
    return bot


def _secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)


async def stop_bot(bot: Any) -> None:
    await bot.close()
    runner = getattr(bot, "runner", None)
    if runner is not None:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(runner, 3)


@pytest.fixture
async def atelier(emu: Any, settings: AtelierSettings, bot_engine: Engine) -> AsyncIterator[Any]:
    bot = await start_bot(emu, settings, bot_engine)
    try:
        yield bot
    finally:
        await stop_bot(bot)


class WorkerThread:
    """A real trainer worker running jobs in a thread until stopped."""

    def __init__(self, settings: AtelierSettings, engine: Engine) -> None:
        from trainer.worker import Worker

        self.worker = Worker(settings, engine, worker_id="test-worker")
        self.thread = threading.Thread(target=self.worker.run_forever, daemon=True)

    def __enter__(self) -> WorkerThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.worker.shutdown.set()
        self.thread.join(60)


class WorkerProcess:
    """A real `atelier worker` in its own process (its own GIL), with short timings; kill it
    with SIGKILL to simulate a lost worker."""

    def __init__(self, settings: AtelierSettings, worker_id: str, log_path: Path) -> None:
        self.worker_id = worker_id
        self.log_path = log_path
        self.env = worker_env(settings)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "atelier.cli", "worker", "--id", self.worker_id],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=Path(__file__).resolve().parents[2],
            )
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, the job is left `training` with its heartbeat."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def worker_env(settings: AtelierSettings) -> dict[str, str]:
    """The parent's environment without its ATELIER_* settings, pointed at the test data."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    worker = settings.worker
    env.update(
        ATELIER_DATA_DIR=str(settings.data_dir),
        ATELIER_CONFIG=str(settings.data_dir / "no-such-atelier.toml"),
        ATELIER_WORKER__HEARTBEAT_SECONDS=str(worker.heartbeat_seconds),
        ATELIER_WORKER__STALE_AFTER_SECONDS=str(worker.stale_after_seconds),
        ATELIER_WORKER__POLL_SECONDS=str(worker.poll_seconds),
        ATELIER_WORKER__PROGRESS_EVENT_SECONDS=str(worker.progress_event_seconds),
        ATELIER_WORKER__DEVICE="cpu",
        ATELIER_VOTE_WINDOW_HOURS=str(settings.vote_window_hours),
    )
    if settings.database_url:
        env["ATELIER_DATABASE_URL"] = settings.database_url
    return env
