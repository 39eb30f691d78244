"""What each of a job's events looks like in Discord: the job card and its thread, the progress
message, checkpoint grids, the comparison vote, failures, and the finished model.

`JobPosts` holds the handlers the notifier's table points at; the notifier decides when an event
is said (order, retries, giving up), this module only how.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord

from bot import delivery, queries, render
from bot.db import run_db
from bot.render import NUMBER_EMOJI, VOTE_EMOJI
from bot.visibility import visible_to_everyone
from storage.events import EventKind, event_nonce, posted_ids, record_posted
from storage.models import Event, Job

if TYPE_CHECKING:
    from bot.client import AtelierBot

log = logging.getLogger(__name__)

WHAT = {
    EventKind.QUEUED: "the job card",
    EventKind.CHECKPOINT: "a checkpoint grid",
    EventKind.TRAINING_DONE: "the comparison grid",
    EventKind.FINALIZED: "the model file",
}
"""How a give-up notice names what could not be posted."""


class JobPosts:
    """Posts and edits a job's messages; one per notifier (it remembers the progress shown)."""

    def __init__(self, bot: AtelierBot) -> None:
        self.bot = bot
        self.engine = bot.engine
        self.last_edit: dict[int, float] = {}
        self.progress: dict[int, dict[str, Any]] = {}

    async def target(self, job: Job) -> Any:
        channel_id = job.thread_id or job.channel_id
        assert channel_id is not None
        return await delivery.resolve_channel(self.bot, channel_id)

    async def send(
        self, target: Any, event: Event, content: str | None = None, **kwargs: Any
    ) -> discord.Message:
        """Post an event's main message once: the id recorded right after posting lets a retry
        reuse it; when a crash came between posting and recording, the marker finds it."""
        if event.message_id:
            try:
                return await target.fetch_message(event.message_id)
            except discord.NotFound:
                pass
        message = await delivery.send(
            target, event_nonce(event), content, recheck=event.attempted_at is not None, **kwargs
        )
        await run_db(queries.set_event_message, self.engine, event.id, message.id)
        event.message_id = message.id
        return message

    async def secondary(
        self, target: Any, event: Event, suffix: str, content: str | None = None, **kwargs: Any
    ) -> discord.Message:
        """An event's further message (report, announcement): posted once, its id recorded."""
        known = posted_ids(event).get(suffix)
        if known:
            try:
                return await target.fetch_message(known)
            except discord.NotFound:
                pass
        nonce = f"{event_nonce(event)}-{suffix}"
        message = await delivery.send(
            target, nonce, content, recheck=event.attempted_at is not None, **kwargs
        )
        await run_db(record_posted, self.engine, event.id, suffix, message.id)  # type: ignore[arg-type]
        return message

    # --- handlers ------------------------------------------------------------------------

    async def queued(self, job: Job, event: Event) -> int:
        """The job card in the channel, a public thread on it, and the QA report inside."""
        assert job.channel_id is not None and job.id is not None
        channel = await delivery.resolve_channel(self.bot, job.channel_id)
        card = await self.send(
            channel,
            event,
            render.job_card_text(job.id, job.name, job.owner_id, job.method, job.base_model),
            allowed_mentions=discord.AllowedMentions.none(),
        )
        if isinstance(channel, discord.Thread):  # started in a thread: threads hold no threads
            thread_id = channel.id
        else:
            thread_id = job.thread_id or await self._open_thread(channel, card, job)
        await run_db(queries.set_job_fields, self.engine, job.id, thread_id=thread_id)
        thread = await delivery.resolve_channel(self.bot, thread_id)
        report = await run_db(
            queries.dataset_report,
            self.engine,
            job.dataset_id,
            int(job.config.get("resolution") or 512),
            job.base_model,
        )
        new = await run_db(queries.queue_place, self.engine, job.id)
        embed = render.qa_report_embed(report, new[0], new[1], str(job.config.get("trigger", "")))
        await self.secondary(thread, event, "r", embed=embed)
        return card.id

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

    async def started(self, job: Job, event: Event) -> int:
        return await self.status(
            job, "preparing", {"step": job.step, "total": job.total_steps}, nonce=event_nonce(event)
        )

    async def training(self, job: Job, event: Event) -> int | None:
        """Training began; after a requeue, say from which step it resumed."""
        step = int(event.payload.get("resumed_from") or 0)
        if not step:
            return None
        message = await self.send(await self.target(job), event, render.resumed_text(step))
        return message.id

    async def checkpoint(self, job: Job, event: Event) -> int:
        p = event.payload
        target = await self.target(job)
        files = await delivery.read_files([p.get("grid_path")])
        heldout = p.get("heldout_loss")
        previous = (
            await run_db(queries.previous_heldout, self.engine, job.id or 0, int(p["step"]))
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
        message = await self.send(target, event, text, files=files)
        await run_db(queries.set_grid_message, self.engine, int(p["checkpoint_id"]), message.id)
        await delivery.add_reactions(message, [VOTE_EMOJI])
        return message.id

    async def training_done(self, job: Job, event: Event) -> int:
        p = event.payload
        target = await self.target(job)
        ckpts = (await run_db(queries.checkpoints, self.engine, job.id))[-len(NUMBER_EMOJI) :]
        files = await delivery.read_files([p.get("comparison_grid"), p.get("loss_curve")])
        text = render.comparison_text([c.step for c in ckpts], p["deadline"])
        if p.get("overfit_after") is not None:
            text = render.truncate(f"{text}\n{render.overfit_notice(int(p['overfit_after']))}")
        if suggested := render.suggestion_text([c.step for c in ckpts], p.get("suggested_step")):
            text = render.truncate(f"{text}\n{suggested}")
        message = await self.send(target, event, text, files=files)
        await self.final_status(job, "awaiting_vote")
        await delivery.add_reactions(message, list(NUMBER_EMOJI[: len(ckpts)]))
        return message.id

    async def plain(self, job: Job, event: Event) -> int:
        target = await self.target(job)
        text = render.failure_text(event.kind, event.payload, job.owner_id)
        mentions = discord.AllowedMentions(users=[discord.Object(job.owner_id)])
        message = await self.send(target, event, text, allowed_mentions=mentions)
        await self.final_status(job, str(event.payload.get("state") or event.kind))
        return message.id

    async def finalized(self, job: Job, event: Event) -> int:
        p = event.payload
        target = await self.target(job)
        guild = self.bot.get_guild(job.guild_id or 0)
        path = Path(str(p["file"]))
        model = await delivery.model_delivery(
            self.bot, path, delivery.upload_limit(self.bot, guild)
        )
        text = render.finalized_text(p, model.links, model.expires, model.names)
        try:
            message = await self.send(target, event, text, files=model.files)
        except discord.HTTPException as error:
            if error.code != delivery.TOO_LARGE or not model.files:
                raise
            model = await delivery.model_delivery(self.bot, path, 0, links=True)
            message = await delivery.send(
                target,
                event_nonce(event),
                render.finalized_text(p, model.links, model.expires, model.names),
            )
        await self._announce(job, event, " · ".join(model.links) or None)
        await self.final_status(job, "finalized")
        return message.id

    async def _announce(self, job: Job, event: Event, url: str | None) -> None:
        settings = await run_db(queries.guild_settings, self.engine, job.guild_id)
        channel_id = (settings.results_channel_id if settings else None) or job.channel_id
        if channel_id != job.channel_id and not visible_to_everyone(
            self.bot.get_guild(job.guild_id or 0), job.channel_id
        ):  # a model of a private channel is announced there, not to the whole server
            channel_id = job.channel_id
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
        await self.secondary(
            channel, event, "a", text, files=files, allowed_mentions=discord.AllowedMentions.none()
        )

    # --- the progress message ------------------------------------------------------------

    def edited_within(self, job_id: int, seconds: float) -> bool:
        return time.monotonic() - self.last_edit.get(job_id, 0.0) < seconds

    async def status(self, job: Job, state: str, progress: dict[str, Any], nonce: str) -> int:
        """Edit the job's one progress message, or post it when there is none yet."""
        text = render.status_text(job.id, job.name, state, progress)
        self.last_edit[job.id or 0] = time.monotonic()
        target = await self.target(job)
        if job.status_message_id:
            partial = target.get_partial_message(job.status_message_id)
            try:
                await partial.edit(content=text)
                return job.status_message_id
            except discord.NotFound:
                pass  # deleted by someone: post a new one
        message = await delivery.send(target, nonce, text, recheck=True)
        await run_db(queries.set_job_fields, self.engine, job.id, status_message_id=message.id)
        return message.id

    async def final_status(self, job: Job, state: str) -> None:
        if not job.status_message_id:
            return
        progress = self.progress.get(job.id or 0) or {"step": job.step, "total": job.total_steps}
        progress = {**progress, "step": max(int(progress.get("step", 0)), job.step)}
        try:
            await self.status(job, state, progress, nonce=f"atelier-st-{job.id}-{state[:6]}")
        except discord.HTTPException:
            log.warning("job %s: could not update the progress message", job.id)
