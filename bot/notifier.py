"""The outbox → Discord: a background task that turns pending events into messages.

Each event is marked attempted, posted with its own nonce (so a retry after a crash returns the
message Discord already has), then marked delivered with the message id. Progress events are
coalesced (only the newest pending one is rendered) and edits of the progress message are
throttled. Any failure of one event (a Discord refusal or a bug) is retried with that event's
own backoff, so it never holds back another job; after `max_tries` the job's thread (or else the
operator's log) is told what could not be posted and why. Every post carries a marker, so a
bot that comes back after Discord's nonce window finds its earlier post instead of repeating it.

Routing is two tables of event kind → handler: a job's events (`bot.job_events`, said in the
job's thread, in order) and the job-less ones of `/generate`, `/iterate` and `/compare`
(`bot.render_events`, each on its own). This module decides when; those modules decide how.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import discord

from bot import delivery, queries, render, render_events
from bot.db import run_db
from bot.job_events import WHAT, JobPosts
from bot.retries import Retries, deliver_loose, describe_error
from storage.events import (
    EventKind,
    event_nonce,
    mark_attempted,
    mark_delivered,
    pending,
    record_failed_try,
)
from storage.models import Event, Job

if TYPE_CHECKING:
    from bot.client import AtelierBot

log = logging.getLogger(__name__)

Handler = Callable[[Job, Event], Awaitable[int | None]]
TRAINING = "training"  # the `preparing → training` transition's event kind


class Notifier:
    """Polls the outbox and says each event where it belongs."""

    poll_seconds = 1.0

    def __init__(self, bot: AtelierBot) -> None:
        self.bot = bot
        self.engine = bot.engine
        self.retries = Retries(base_seconds=5.0, max_tries=8)
        self.posts = JobPosts(bot)
        self._locks: dict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._loose_lock = asyncio.Lock()
        self._explained: set[tuple[int, str]] = set()
        self.handlers: dict[str, Handler] = {
            EventKind.QUEUED: self.posts.queued,
            EventKind.STARTED: self.posts.started,
            TRAINING: self.posts.training,
            EventKind.CHECKPOINT: self.posts.checkpoint,
            EventKind.TRAINING_DONE: self.posts.training_done,
            EventKind.FAILED: self.posts.plain,
            EventKind.CANCELLED: self.posts.plain,
            EventKind.REQUEUED: self.posts.plain,
            EventKind.FINALIZED: self.posts.finalized,
        }
        self.loose_handlers = dict(render_events.HANDLERS)

    @property
    def retry_base_seconds(self) -> float:
        return self.retries.base_seconds

    @retry_base_seconds.setter
    def retry_base_seconds(self, value: float) -> None:
        self.retries.base_seconds = value

    @property
    def max_tries(self) -> int:
        return self.retries.max_tries

    @max_tries.setter
    def max_tries(self, value: int) -> None:
        self.retries.max_tries = value

    def is_loose(self, event: Event) -> bool:
        """A job-less event (a render request's): said on its own, not in a job's order."""
        return event.kind in self.loose_handlers

    # --- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # one bad event must not stop the notifier
                log.exception("notifier tick failed")
            await asyncio.sleep(self.poll_seconds)

    async def tick(self) -> None:
        events = await run_db(pending, self.engine, 500)
        try:
            await self.deliver_loose([e for e in events if self.is_loose(e)])
        except Exception:
            log.exception("render events: delivery failed; retried next tick")
        by_job: dict[int | None, list[Event]] = defaultdict(list)
        for event in events:
            if not self.is_loose(event):
                by_job[event.job_id].append(event)
        for job_id, job_events in by_job.items():
            if job_id is None:  # nothing to say for a job-less event of another kind
                for event in job_events:
                    await run_db(mark_delivered, self.engine, event.id, None)  # type: ignore[arg-type]
            else:
                try:
                    await self.process(job_id, job_events)
                except Exception:  # isolated: the next job's events still go out
                    log.exception("job %s: delivering its events failed; retried", job_id)

    async def deliver_loose(self, events: Sequence[Event] | None = None) -> None:
        """Say job-less events (by default every pending one), each once: a lock keeps the
        loop and a command (`/iterate finish`) from posting the same event together."""
        async with self._loose_lock:
            fresh = {e.id: e for e in await run_db(pending, self.engine, 500)}
            if events is None:
                events = [e for e in fresh.values() if self.is_loose(e)]
            for event in events:
                if event.id not in fresh:
                    continue
                say, what, source = self.loose_handlers[event.kind]
                await deliver_loose(
                    self, fresh[event.id], partial(say, self.bot), what, source or event.kind
                )

    async def process_job(self, job_id: int) -> bool:
        """Deliver a job's pending events now (used by /train and /job finalize). False when
        that failed: the background loop retries, so the caller need not fail."""
        try:
            events = await run_db(pending, self.engine, 500)
            await self.process(
                job_id, [e for e in events if e.job_id == job_id and not self.is_loose(e)]
            )
        except Exception:
            log.exception("job %s: delivering its events failed; the notifier retries", job_id)
            return False
        return True

    async def process(self, job_id: int, events: Sequence[Event]) -> None:
        async with self._locks[job_id]:
            fresh = {e.id: e for e in await run_db(pending, self.engine, 500)}
            # another task may have said some meanwhile, or recorded their message ids
            events = [fresh[e.id] for e in events if e.id in fresh]
            progress = [e for e in events if e.kind == EventKind.PROGRESS]
            for event in (e for e in events if e.kind != EventKind.PROGRESS):
                job = await run_db(queries.get_job, self.engine, job_id)
                if not await self.deliver(job, event):
                    break  # keep the thread's order: later events wait for this one
            if progress:
                await self._coalesce_progress(job_id, progress)

    # --- one event -----------------------------------------------------------------------

    async def deliver(self, job: Job, event: Event) -> bool:
        """Say one event; False while it waits for a retry (later events of the job wait)."""
        assert event.id is not None
        if not self.retries.ready(event.id):
            return False
        handler = self.handlers.get(event.kind)
        await run_db(mark_attempted, self.engine, event.id)
        try:
            message_id = await handler(job, event) if handler else None
        except Exception as error:  # any failure: this event alone backs off
            return await self._failed(job, event, error)
        await run_db(mark_delivered, self.engine, event.id, message_id)
        self.retries.done(event.id)
        return True

    async def _failed(self, job: Job, event: Event, error: Exception) -> bool:
        """Count the failure; after `max_tries`, say in the thread what was not posted."""
        assert event.id is not None
        tries = self.retries.failed(
            event.id, await run_db(record_failed_try, self.engine, event.id)
        )
        log.warning(
            "job %s: event %s (%s) failed (try %s): %s",
            job.id,
            event.id,
            event.kind,
            tries,
            describe_error(error),
            exc_info=not isinstance(error, discord.HTTPException),
        )
        if isinstance(error, discord.Forbidden):
            await self._explain(job, event)
        if not self.retries.exhausted(event.id):
            return False
        await self._give_up(job, event, error, tries)
        await run_db(mark_delivered, self.engine, event.id, None)
        self.retries.done(event.id)
        return True

    async def _give_up(self, job: Job, event: Event, error: Exception, tries: int) -> None:
        """Nothing is dropped silently: the thread (or channel, or the log) hears what."""
        what = WHAT.get(event.kind, "an update")
        kept = None
        if event.kind == EventKind.FINALIZED and event.payload.get("file"):
            kept = delivery.link_if_possible(self.bot, Path(str(event.payload["file"])))
        text = render.undeliverable_text(job.id, what, describe_error(error), tries, kept)
        log.error("job %s: giving up on event %s (%s): %s", job.id, event.id, event.kind, text)
        await delivery.tell_somewhere(
            self.bot, [job.thread_id, job.channel_id], text, f"{event_nonce(event)}-x"
        )

    async def _explain(self, job: Job, event: Event) -> None:
        target = await self.posts.target(job)
        with_files = event.kind in (
            EventKind.CHECKPOINT,
            EventKind.TRAINING_DONE,
            EventKind.FINALIZED,
        )
        missing = delivery.missing_permission(target, with_files)
        if (job.id or 0, missing) in self._explained:
            return
        self._explained.add((job.id or 0, missing))
        what = WHAT.get(event.kind, "an update")
        await delivery.explain_refusal(
            self.bot,
            target,
            job.channel_id,
            job.owner_id,
            what,
            missing,
            nonce=f"{event_nonce(event)}-p",
        )

    # --- the progress message ------------------------------------------------------------

    async def _coalesce_progress(self, job_id: int, events: list[Event]) -> None:
        newest = events[-1]
        for old in events[:-1]:
            await run_db(mark_delivered, self.engine, old.id, None)  # type: ignore[arg-type]
        job = await run_db(queries.get_job, self.engine, job_id)
        self.posts.progress[job_id] = dict(newest.payload)
        if job.state != "training":  # training ended: the final status says it
            await run_db(mark_delivered, self.engine, newest.id, job.status_message_id)  # type: ignore[arg-type]
            return
        if self.posts.edited_within(job_id, self.bot.settings.discord.progress_edit_seconds):
            return  # stays pending; the next tick renders the newest one
        try:
            message_id = await self.posts.status(
                job, "training", newest.payload, nonce=event_nonce(newest)
            )
        except discord.HTTPException as error:
            log.warning("job %s: progress update refused (%s)", job_id, error.status)
            return
        await run_db(mark_delivered, self.engine, newest.id, message_id)  # type: ignore[arg-type]
