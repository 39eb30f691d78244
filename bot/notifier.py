"""The outbox → Discord: a background task that turns pending events into thread messages.

Each event is marked attempted, posted with its own nonce (so a retry after a crash returns the
message Discord already has), then marked delivered with the message id. Progress events are
coalesced (only the newest pending one is rendered) and edits of the progress message are
throttled. A Discord refusal is explained to the job's owner and retried with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord

from bot import delivery, queries, render
from bot.db import run_db
from bot.render import NUMBER_EMOJI, VOTE_EMOJI
from storage.events import EventKind, event_nonce, mark_attempted, mark_delivered, pending
from storage.models import Event, Job

if TYPE_CHECKING:
    from bot.client import AtelierBot

log = logging.getLogger(__name__)

Handler = Callable[[Job, Event], Awaitable[int | None]]
GENERATION_FAILED = "generation_failed"
GENERATION_KINDS = frozenset({EventKind.GENERATED, GENERATION_FAILED})
TRAINING = "training"  # the `preparing → training` transition's event kind
WHAT = {
    EventKind.QUEUED: "the job card",
    EventKind.CHECKPOINT: "a checkpoint grid",
    EventKind.TRAINING_DONE: "the comparison grid",
    EventKind.FINALIZED: "the model file",
}


class Notifier:
    """Polls the outbox and says each event in the job's thread."""

    poll_seconds = 1.0
    retry_base_seconds = 5.0
    max_tries = 8

    def __init__(self, bot: AtelierBot) -> None:
        self.bot = bot
        self.engine = bot.engine
        self._locks: dict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._last_edit: dict[int, float] = {}
        self._progress: dict[int, dict[str, Any]] = {}
        self._tries: dict[int, int] = defaultdict(int)
        self._retry_at: dict[int, float] = {}
        self._explained: set[tuple[int, str]] = set()
        self.handlers: dict[str, Handler] = {
            EventKind.QUEUED: self._queued,
            EventKind.STARTED: self._started,
            TRAINING: self._training,
            EventKind.CHECKPOINT: self._checkpoint,
            EventKind.TRAINING_DONE: self._training_done,
            EventKind.FAILED: self._plain,
            EventKind.CANCELLED: self._plain,
            EventKind.REQUEUED: self._plain,
            EventKind.FINALIZED: self._finalized,
        }

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
        from bot.exts import iterate  # /iterate and /compare events carry no job

        await iterate.deliver(self, [e for e in events if iterate.is_iteration_event(e)])
        events = [e for e in events if not iterate.is_iteration_event(e)]
        await self._generations([e for e in events if is_generation(e)])
        by_job: dict[int | None, list[Event]] = defaultdict(list)
        for event in events:
            if not is_generation(event):
                by_job[event.job_id].append(event)
        for job_id, job_events in by_job.items():
            if job_id is None:  # nothing to say for a job-less event of another kind
                for event in job_events:
                    await run_db(mark_delivered, self.engine, event.id, None)  # type: ignore[arg-type]
            else:
                await self.process(job_id, job_events)

    async def process_job(self, job_id: int) -> bool:
        """Deliver a job's pending events now (used by /train and /job finalize). False when
        that failed: the background loop retries, so the caller need not fail."""
        try:
            events = await run_db(pending, self.engine, 500)
            await self.process(
                job_id, [e for e in events if e.job_id == job_id and not is_generation(e)]
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
        assert event.id is not None
        if self._retry_at.get(event.id, 0.0) > time.monotonic():
            return False
        handler = self.handlers.get(event.kind)
        await run_db(mark_attempted, self.engine, event.id)
        try:
            message_id = await handler(job, event) if handler else None
        except discord.HTTPException as error:
            return await self._refused(job, event, error)
        await run_db(mark_delivered, self.engine, event.id, message_id)
        self._tries.pop(event.id, None)
        self._retry_at.pop(event.id, None)
        return True

    async def _refused(self, job: Job, event: Event, error: discord.HTTPException) -> bool:
        assert event.id is not None
        tries = self._tries[event.id] = self._tries[event.id] + 1
        log.warning(
            "job %s: event %s (%s) refused by Discord (%s %s), try %s",
            job.id,
            event.id,
            event.kind,
            error.status,
            error.code,
            tries,
        )
        if isinstance(error, discord.Forbidden):
            await self._explain(job, event)
        if tries >= self.max_tries:
            log.error("job %s: giving up on event %s after %s tries", job.id, event.id, tries)
            await run_db(mark_delivered, self.engine, event.id, None)
            return True
        delay = min(self.retry_base_seconds * 2 ** (tries - 1), 300.0)
        self._retry_at[event.id] = time.monotonic() + delay
        return False

    async def _explain(self, job: Job, event: Event) -> None:
        target = await self._target(job)
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

    async def _target(self, job: Job) -> Any:
        channel_id = job.thread_id or job.channel_id
        assert channel_id is not None
        return await delivery.resolve_channel(self.bot, channel_id)

    async def _send(
        self, target: Any, event: Event, content: str | None = None, **kwargs: Any
    ) -> discord.Message:
        """Post an event's main message once: the nonce makes Discord return an earlier copy,
        and the id recorded right after posting lets a retry reuse it where nonces are not
        enforced."""
        if event.message_id:
            try:
                return await target.fetch_message(event.message_id)
            except discord.NotFound:
                pass
        message = await delivery.send(target, event_nonce(event), content, **kwargs)
        await run_db(queries.set_event_message, self.engine, event.id, message.id)
        event.message_id = message.id
        return message

    # --- handlers ------------------------------------------------------------------------

    async def _queued(self, job: Job, event: Event) -> int:
        """The job card in the channel, a public thread on it, and the QA report inside."""
        assert job.channel_id is not None and job.id is not None
        channel = await delivery.resolve_channel(self.bot, job.channel_id)
        card = await self._send(
            channel,
            event,
            render.job_card_text(job.id, job.name, job.owner_id, job.method, job.base_model),
            allowed_mentions=discord.AllowedMentions.none(),
        )
        thread_id = job.thread_id or await self._open_thread(channel, card, job)
        await run_db(queries.set_job_fields, self.engine, job.id, thread_id=thread_id)
        thread = await delivery.resolve_channel(self.bot, thread_id)
        report = await run_db(queries.dataset_report, self.engine, job.dataset_id)
        new = await run_db(self._position, job)
        embed = render.qa_report_embed(report, new[0], new[1], str(job.config.get("trigger", "")))
        await delivery.send(thread, f"{event_nonce(event)}-r", embed=embed)
        return card.id

    def _position(self, job: Job) -> tuple[int, float | None]:
        from storage import jobs
        from storage.db import session_scope

        with session_scope(self.engine) as session:
            current = jobs.get_job(session, job.id)  # type: ignore[arg-type]
            return jobs.queue_position(session, current), queries.start_estimate(session, current)

    async def _open_thread(self, channel: Any, card: discord.Message, job: Job) -> int:
        try:
            thread = await channel.create_thread(
                name=f"job-{job.id}-{job.name}"[:100], message=card, auto_archive_duration=1440
            )
            return thread.id
        except discord.HTTPException as error:
            if error.code == 160004:  # a thread already exists on this message (a retry)
                return card.id
            raise

    async def _started(self, job: Job, event: Event) -> int:
        return await self._status(
            job, "preparing", {"step": job.step, "total": job.total_steps}, nonce=event_nonce(event)
        )

    async def _training(self, job: Job, event: Event) -> int | None:
        """Training began; after a requeue, say from which step it resumed."""
        step = int(event.payload.get("resumed_from") or 0)
        if not step:
            return None
        target = await self._target(job)
        message = await self._send(target, event, render.resumed_text(step))
        return message.id

    async def _checkpoint(self, job: Job, event: Event) -> int:
        p = event.payload
        target = await self._target(job)
        files = await delivery.read_files([p.get("grid_path")])
        heldout = p.get("heldout_loss")
        previous = (
            await run_db(previous_heldout, self.engine, job.id or 0, int(p["step"]))
            if heldout is not None
            else None
        )
        text = render.checkpoint_caption(
            int(p["step"]),
            int(p.get("total") or job.total_steps),
            p.get("loss"),
            None,
            heldout,
            previous,
            p.get("leakage"),
        )
        message = await self._send(target, event, text, files=files)
        await run_db(queries.set_grid_message, self.engine, int(p["checkpoint_id"]), message.id)
        await delivery.add_reactions(message, [VOTE_EMOJI])
        return message.id

    async def _training_done(self, job: Job, event: Event) -> int:
        p = event.payload
        target = await self._target(job)
        ckpts = (await run_db(queries.checkpoints, self.engine, job.id))[-len(NUMBER_EMOJI) :]
        files = await delivery.read_files([p.get("comparison_grid"), p.get("loss_curve")])
        text = render.comparison_text([c.step for c in ckpts], p["deadline"])
        if p.get("overfit_after") is not None:
            text = render.truncate(f"{text}\n{render.overfit_notice(int(p['overfit_after']))}")
        if suggested := render.suggestion_text([c.step for c in ckpts], p.get("suggested_step")):
            text = render.truncate(f"{text}\n{suggested}")
        message = await self._send(target, event, text, files=files)
        await self._final_status(job, "awaiting_vote")
        await delivery.add_reactions(message, list(NUMBER_EMOJI[: len(ckpts)]))
        return message.id

    async def _plain(self, job: Job, event: Event) -> int:
        target = await self._target(job)
        text = render.failure_text(event.kind, event.payload, job.owner_id)
        mentions = discord.AllowedMentions(users=[discord.Object(job.owner_id)])
        message = await self._send(target, event, text, allowed_mentions=mentions)
        state = str(event.payload.get("state") or event.kind)
        await self._final_status(job, state)
        return message.id

    async def _finalized(self, job: Job, event: Event) -> int:
        p = event.payload
        target = await self._target(job)
        guild = self.bot.get_guild(job.guild_id or 0)
        path = Path(str(p["file"]))
        file, url, expires = await delivery.file_or_link(self.bot, guild, path)
        text = render.finalized_text(p, url, expires)
        try:
            message = await self._send(target, event, text, files=[file] if file else [])
        except discord.HTTPException as error:
            if error.code != delivery.TOO_LARGE or file is None:
                raise
            url, expires = self.bot.signer.link(path)
            message = await delivery.send(
                target, event_nonce(event), render.finalized_text(p, url, expires)
            )
        await self._announce(job, event, url)
        await self._final_status(job, "finalized")
        return message.id

    async def _announce(self, job: Job, event: Event, url: str | None) -> None:
        settings = await run_db(queries.guild_settings, self.engine, job.guild_id)
        channel_id = (settings.results_channel_id if settings else None) or job.channel_id
        assert channel_id is not None
        channel = await delivery.resolve_channel(self.bot, channel_id)
        ckpt = await run_db(
            queries.get_checkpoint, self.engine, int(event.payload.get("winner_checkpoint_id") or 0)
        )
        files = await delivery.read_files([ckpt.grid_path if ckpt else None])
        text = render.announcement_text(
            job.name,
            job.owner_id,
            str(job.config.get("trigger", "")),
            job.base_model,
            job.method,
            url,
        )
        if job.thread_id:
            text = render.truncate(f"{text}\nThread: <#{job.thread_id}>")
        await delivery.send(
            channel,
            f"{event_nonce(event)}-a",
            text,
            files=files,
            allowed_mentions=discord.AllowedMentions.none(),
        )

    # --- the progress message ------------------------------------------------------------

    async def _coalesce_progress(self, job_id: int, events: list[Event]) -> None:
        newest = events[-1]
        for old in events[:-1]:
            await run_db(mark_delivered, self.engine, old.id, None)  # type: ignore[arg-type]
        job = await run_db(queries.get_job, self.engine, job_id)
        self._progress[job_id] = dict(newest.payload)
        if job.state != "training":  # training ended: the final status says it
            await run_db(mark_delivered, self.engine, newest.id, job.status_message_id)  # type: ignore[arg-type]
            return
        wait = self.bot.settings.discord.progress_edit_seconds
        if time.monotonic() - self._last_edit.get(job_id, 0.0) < wait:
            return  # stays pending; the next tick renders the newest one
        try:
            message_id = await self._status(
                job, "training", newest.payload, nonce=event_nonce(newest)
            )
        except discord.HTTPException as error:
            log.warning("job %s: progress update refused (%s)", job_id, error.status)
            return
        await run_db(mark_delivered, self.engine, newest.id, message_id)  # type: ignore[arg-type]

    async def _status(self, job: Job, state: str, progress: dict[str, Any], nonce: str) -> int:
        """Edit the job's one progress message, or post it when there is none yet."""
        text = render.status_text(job.id, job.name, state, progress)
        self._last_edit[job.id or 0] = time.monotonic()
        target = await self._target(job)
        if job.status_message_id:
            partial = target.get_partial_message(job.status_message_id)
            try:
                await partial.edit(content=text)
                return job.status_message_id
            except discord.NotFound:
                pass  # deleted by someone: post a new one
        message = await delivery.send(target, nonce, text)
        await run_db(queries.set_job_fields, self.engine, job.id, status_message_id=message.id)
        return message.id

    async def _final_status(self, job: Job, state: str) -> None:
        if not job.status_message_id:
            return
        progress = self._progress.get(job.id or 0) or {"step": job.step, "total": job.total_steps}
        progress = {**progress, "step": max(int(progress.get("step", 0)), job.step)}
        try:
            await self._status(job, state, progress, nonce=f"atelier-st-{job.id}-{state[:6]}")
        except discord.HTTPException:
            log.warning("job %s: could not update the progress message", job.id)

    # --- /generate results ---------------------------------------------------------------

    async def _generations(self, events: list[Event]) -> None:
        """`/generate` results: the image (or why there is none) in the member's channel."""
        for event in events:
            await run_db(mark_attempted, self.engine, event.id)  # type: ignore[arg-type]
            try:
                message_id = await self._generation(event)
            except discord.HTTPException as error:
                log.warning("generation event %s refused (%s)", event.id, error.status)
                continue
            await run_db(mark_delivered, self.engine, event.id, message_id)  # type: ignore[arg-type]

    async def _generation(self, event: Event) -> int:
        p = event.payload
        user_id = int(p.get("user_id") or 0)
        channel = await delivery.resolve_channel(self.bot, int(p["channel_id"]))
        mentions = discord.AllowedMentions(users=[discord.Object(user_id)])
        if event.kind == EventKind.GENERATED:
            files = await delivery.read_files([p.get("image_path")])
            text = render.generated_text(user_id, str(p.get("prompt", "")))
        else:
            files, text = [], render.generation_failed_text(user_id, str(p.get("reason", "")))
        message = await delivery.send(
            channel, event_nonce(event), text, files=files, allowed_mentions=mentions
        )
        return message.id


def previous_heldout(engine: Any, job_id: int, step: int) -> float | None:
    """The held-out loss of the job's checkpoint before `step` (from its event), if any."""
    from sqlmodel import col, select

    from storage.db import session_scope

    with session_scope(engine) as session:
        rows = session.exec(
            select(Event)
            .where(Event.job_id == job_id, Event.kind == EventKind.CHECKPOINT)
            .order_by(col(Event.id))
        ).all()
    earlier = [e.payload for e in rows if int(e.payload.get("step") or 0) < step]
    if not earlier:
        return None
    value = max(reversed(earlier), key=lambda p: int(p.get("step") or 0)).get("heldout_loss")
    return float(value) if value is not None else None


def is_generation(event: Event) -> bool:
    return event.kind in GENERATION_KINDS
