"""How the bot runs uploads: quotas before bytes, threads of its own, progress for the member.

- Before a byte is downloaded: the member's in-flight upload cap (counted here, in memory),
  the job limit (for `/train`), and the member's and guild's storage quotas, with the sizes
  of their other uploads in flight reserved.
- The download's file writes and the ingest run in thread pools of their own, never the
  loop's default pool that every database call uses; ingest itself hands the images to the
  decoding processes (`storage.ingest.pool`).
- A long ingest edits the member's "thinking…" reply with how many images are checked.
- Dataset folders nothing refers to (refused after ingest, or left by a crash) are swept.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import discord
from sqlalchemy.engine import Engine

from bot.db import run_db
from bot.errors import LimitReached
from bot.settings import BotSettings
from storage import quotas
from storage.ingest import IngestOptions, IngestResult, ingest_zip

log = logging.getLogger(__name__)
T = TypeVar("T")

PROGRESS_AFTER_SECONDS = 3.0
"""The member sees Discord's "thinking…" for this long before the first progress line."""

PROGRESS_POLL_SECONDS = 0.2
SWEEP_EVERY_SECONDS = 3600.0
IO_THREADS = 2


@dataclass
class Progress:
    """Written by the ingest thread, read by the loop (plain ints: no lock needed)."""

    done: int = 0
    total: int = 0

    def update(self, done: int, total: int) -> None:
        self.done, self.total = done, total


class Ingests:
    """The bot's upload bookkeeping and its thread pools (one per bot)."""

    def __init__(self, settings: BotSettings) -> None:
        self.settings = settings
        limits = settings.limits
        self.ingest_threads = ThreadPoolExecutor(limits.concurrent_ingests, "ingest")
        self.io_threads = ThreadPoolExecutor(IO_THREADS, "upload-io")
        self.in_flight: Counter[tuple[int | None, int]] = Counter()
        self.reserved_member: Counter[tuple[int | None, int]] = Counter()
        self.reserved_guild: Counter[int | None] = Counter()

    async def io(self, fn: Callable[..., T], *args: Any) -> T:
        """Blocking file I/O of uploads, on the upload threads."""
        return await asyncio.get_running_loop().run_in_executor(self.io_threads, fn, *args)

    @contextlib.asynccontextmanager
    async def admitted(
        self,
        engine: Engine,
        guild_id: int | None,
        user_id: int,
        expected_bytes: int,
        job_limit: int | None = None,
    ) -> AsyncIterator[None]:
        """Hold an upload slot for the member while the body runs; refuse before any download
        when the member has too many uploads in flight, too many jobs, or no room left."""
        key = (guild_id, user_id)
        limits = self.settings.limits
        if self.in_flight[key] >= limits.uploads_per_member:
            raise LimitReached(
                "You already have an upload being checked; wait until it is done, then try again."
            )
        self.in_flight[key] += 1  # taken before the first await: two commands cannot both pass
        self.reserved_member[key] += expected_bytes
        self.reserved_guild[guild_id] += expected_bytes
        try:
            incoming = quotas.Usage(self.reserved_member[key], self.reserved_guild[guild_id])
            try:
                await run_db(
                    quotas.check_before_download,
                    engine,
                    guild_id,
                    user_id,
                    incoming,
                    limits,
                    job_limit,
                )
            except quotas.QuotaExceeded as error:
                raise LimitReached(str(error)) from None
            yield
        finally:
            self.in_flight[key] -= 1
            self.reserved_member[key] -= expected_bytes
            self.reserved_guild[guild_id] -= expected_bytes

    async def ingest(
        self,
        path: Path,
        options: IngestOptions,
        interaction: discord.Interaction | None = None,
    ) -> IngestResult:
        """Run `ingest_zip` on an ingest thread, showing progress on long ones."""
        settings = self.settings
        progress = Progress()
        call = functools.partial(
            ingest_zip, path, settings.datasets_dir, options, settings.limits, progress.update
        )
        work = asyncio.get_running_loop().run_in_executor(self.ingest_threads, call)
        reporter = None
        if interaction is not None:
            every = settings.discord.progress_edit_seconds
            reporter = asyncio.create_task(show_progress(interaction, progress, every))
        try:
            return await work
        finally:
            if reporter is not None:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter

    async def sweep(self, engine: Engine) -> list[str]:
        """Remove unreferenced dataset folders and stale downloads (in the upload threads)."""
        settings = self.settings
        removed = await self.io(quotas.sweep_datasets, engine, settings.datasets_dir)
        await self.io(quotas.sweep_incoming, settings.data_dir / "incoming")
        if removed:
            log.info("swept %d unreferenced dataset folder(s)", len(removed))
        return removed

    async def sweep_forever(self, engine: Engine) -> None:
        while True:
            try:
                await self.sweep(engine)
            except Exception:
                log.exception("dataset sweep failed")
            await asyncio.sleep(SWEEP_EVERY_SECONDS)

    def close(self) -> None:
        self.ingest_threads.shutdown(wait=False, cancel_futures=True)
        self.io_threads.shutdown(wait=False, cancel_futures=True)


async def show_progress(interaction: discord.Interaction, progress: Progress, every: float) -> None:
    """Edit the deferred reply with the images checked so far, at most once per `every` s."""
    await asyncio.sleep(PROGRESS_AFTER_SECONDS)
    loop = asyncio.get_running_loop()
    shown, last = (-1, -1), float("-inf")
    while True:
        now = (progress.done, progress.total)
        if now != shown and progress.total and loop.time() - last >= every:
            last = loop.time()
            with contextlib.suppress(discord.HTTPException):
                await interaction.edit_original_response(
                    content=f"Checking your images: {now[0]:,} of {now[1]:,} done…"
                )
            shown = now
        await asyncio.sleep(PROGRESS_POLL_SECONDS)


_fallback: dict[int, Ingests] = {}


def ingests_of(client: Any, settings: BotSettings) -> Ingests:
    """The bot's `Ingests` (one made on first use for clients without one)."""
    found = getattr(client, "ingests", None)
    if isinstance(found, Ingests):
        return found
    return _fallback.setdefault(id(settings), Ingests(settings))
