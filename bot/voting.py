"""Reactions become votes; on start-up votes are re-counted from the messages themselves; votes
close at their deadline (or earlier with /job finalize).

Only members' reactions count (not bots', not the bot's own). A count that could not be read
from Discord (a 5xx or 429 while fetching) changes nothing: the stored votes stay, and a close
is postponed rather than decided, and files deleted, on a count nobody read."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import discord

from bot import delivery, queries
from bot.db import run_db
from bot.render import NUMBER_EMOJI, VOTE_EMOJI
from storage.finalize import FinalizeOutcome, NothingToFinalize, finalize
from storage.models import Checkpoint, Job

if TYPE_CHECKING:
    from bot.client import AtelierBot

log = logging.getLogger(__name__)


def checkpoint_for_reaction(
    emoji: str, kind: str, grid_checkpoint_id: int | None, numbered: Sequence[Checkpoint]
) -> int | None:
    """Which checkpoint a reaction votes for: 👍 on a checkpoint's grid, or its number on the
    comparison grid. Anything else is not a vote."""
    emoji = plain(emoji)
    if kind == "grid":
        return grid_checkpoint_id if emoji == plain(VOTE_EMOJI) else None
    numbers = [plain(n) for n in NUMBER_EMOJI]
    if emoji in numbers:
        index = numbers.index(emoji)
        if index < len(numbered):
            return numbered[index].id
    return None


def plain(emoji: str) -> str:
    """Emoji without variation selectors (clients send 1️⃣ with or without U+FE0F)."""
    return emoji.replace("\ufe0f", "")


def numbered_checkpoints(checkpoints: Sequence[Checkpoint]) -> list[Checkpoint]:
    """The checkpoints the comparison grid numbers 1️⃣…🔟 (the newest ten, by step)."""
    return sorted(checkpoints, key=lambda c: c.step)[-len(NUMBER_EMOJI) :]


class CountUnreadable(RuntimeError):
    """Discord did not give us a vote message's reactions just now."""


def merge_reactions(
    grid_voters: dict[int, set[int]], number_voters: dict[int, set[int]], bot_id: int
) -> dict[int, set[int]]:
    """Checkpoint id → members, from both kinds of message; one vote per member per
    checkpoint; the bot's own reactions do not count."""
    merged: dict[int, set[int]] = defaultdict(set)
    for source in (grid_voters, number_voters):
        for checkpoint_id, users in source.items():
            merged[checkpoint_id] |= {u for u in users if u != bot_id}
    return dict(merged)


class Voting:
    """Reaction handling, recounts and the deadline task."""

    check_seconds = 15.0

    def __init__(self, bot: AtelierBot) -> None:
        self.bot = bot
        self.engine = bot.engine

    async def on_reaction(self, payload: discord.RawReactionActionEvent, on: bool) -> None:
        if self.bot.user is not None and payload.user_id == self.bot.user.id:
            return
        if payload.member is not None and payload.member.bot:
            return  # other bots' (and apps') reactions are not votes
        target = await run_db(queries.vote_target, self.engine, payload.message_id)
        if target is None:
            return
        ckpts = numbered_checkpoints(await run_db(queries.checkpoints, self.engine, target.job_id))
        checkpoint_id = checkpoint_for_reaction(
            str(payload.emoji), target.kind, target.checkpoint_id, ckpts
        )
        if checkpoint_id is None:
            return
        if on:
            await run_db(queries.record_vote, self.engine, checkpoint_id, payload.user_id, True)
            return
        # the member may still hold the other reaction for the same checkpoint: recount that
        # one checkpoint (its grid and its number), not the whole job
        job = await run_db(queries.get_job, self.engine, target.job_id)
        try:
            await self.recount(job, only=checkpoint_id)
        except CountUnreadable:
            log.warning("job %s: recount after a removed reaction failed; votes kept", job.id)

    async def recount(self, job: Job, only: int | None = None) -> None:
        """Make the stored votes of a job (or of checkpoint `only`) what its messages show;
        `CountUnreadable` (and nothing stored) when a message could not be read."""
        ckpts = await run_db(queries.checkpoints, self.engine, job.id)
        channel = await delivery.resolve_channel(self.bot, job.thread_id or job.channel_id)  # type: ignore[arg-type]
        wanted = [c for c in ckpts if only is None or c.id == only]
        grid = {
            c.id: await self._users(channel, c.grid_message_id, VOTE_EMOJI)
            for c in wanted
            if c.grid_message_id
        }
        numbers: dict[int, set[int]] = defaultdict(set)
        for message_id in await run_db(queries.comparison_message_ids, self.engine, job.id):
            for index, ckpt in enumerate(numbered_checkpoints(ckpts)):
                if only is None or ckpt.id == only:
                    numbers[ckpt.id] |= await self._users(channel, message_id, NUMBER_EMOJI[index])  # type: ignore[index]
        bot_id = self.bot.user.id if self.bot.user else 0
        counts = merge_reactions(grid, numbers, bot_id)  # type: ignore[arg-type]
        counts = {c.id: counts.get(c.id, set()) for c in wanted}  # type: ignore[misc]
        await run_db(queries.store_recount, self.engine, counts)

    async def _users(self, channel: object, message_id: int | None, emoji: str) -> set[int]:
        """Members (not bots) who reacted `emoji` on a message; `CountUnreadable` when Discord
        did not answer. A message that is gone has no votes."""
        if message_id is None:
            return set()
        try:
            message = await channel.fetch_message(message_id)  # type: ignore[attr-defined]
            for reaction in message.reactions:
                if plain(str(reaction.emoji)) == plain(emoji):
                    return {user.id async for user in reaction.users() if not user.bot}
        except discord.NotFound:
            return set()
        except discord.HTTPException as error:
            raise CountUnreadable(
                f"message {message_id}: Discord answered {error.status}"
            ) from error
        return set()

    async def recount_open(self) -> None:
        """After a restart: reactions made while the bot was away were never delivered."""
        for job in await run_db(queries.open_vote_jobs, self.engine):
            try:
                await self.recount(job)
            except (CountUnreadable, discord.HTTPException):
                log.warning("job %s: recount failed; stored votes kept", job.id, exc_info=True)

    async def close(self, job: Job, by_user: int | None) -> FinalizeOutcome:
        """Recount, then finalize (keep the winner, delete the rest, write the event).
        `CountUnreadable`: nothing was decided or deleted; try again later."""
        await self.recount(job)
        keep = await run_db(
            queries.keep_count, self.engine, job.guild_id, self.bot.settings.keep_checkpoints
        )
        outcome = await run_db(finalize, self.engine, job.id, keep, by_user)
        await self.bot.notifier.process_job(job.id)  # type: ignore[arg-type]
        return outcome

    async def run_deadlines(self) -> None:
        while True:
            try:
                for job in await run_db(queries.due_jobs, self.engine):
                    try:
                        with contextlib.suppress(NothingToFinalize):
                            await self.close(job, None)
                    except CountUnreadable as error:  # postponed to the next check
                        log.warning("job %s: vote close postponed: %s", job.id, error)
            except Exception:
                log.exception("deadline check failed")
            await asyncio.sleep(self.check_seconds)
