"""`/iterate start|finish`: render candidates with a model, let members keep or discard them,
and close the vote into the next dataset version (at the deadline or on `finish`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import delivery, queries
from bot.db import run_db
from bot.errors import BadInput, NotFound
from bot.exts._common import atelier
from bot.exts.models import model_choices
from bot.permissions import member_is_manager, require_worker_time
from bot.render import NUMBER_EMOJI
from bot.visibility import require_visible
from bot.voting import CountUnreadable, plain
from storage import iterations as it

log = logging.getLogger(__name__)


async def recount(bot: Any, iteration_id: int) -> None:
    """Make the stored candidate votes what the page messages show."""
    iteration = await run_db(it.get_iteration, bot.engine, iteration_id)
    if iteration is None or iteration.thread_id is None:
        return
    thread = await delivery.resolve_channel(bot, iteration.thread_id)
    cands = await run_db(it.candidates, bot.engine, iteration_id)
    bot_id = bot.user.id if bot.user else 0
    votes: dict[tuple[int, int], set[int]] = {}
    cache: dict[int, Any] = {}
    for index, cand in enumerate(cands):
        for value, message_id in (
            (it.KEEP, cand.page_message_id),
            (it.DISCARD, cand.discard_message_id),
        ):
            if not message_id:
                continue
            if message_id not in cache:
                try:
                    cache[message_id] = await thread.fetch_message(message_id)  # type: ignore[attr-defined]
                except discord.NotFound:
                    cache[message_id] = None
                except discord.HTTPException as error:  # stored votes stay; close later
                    raise CountUnreadable(f"page {message_id}: {error.status}") from error
            message = cache[message_id]
            emoji = plain(NUMBER_EMOJI[index % it.PAGE_SIZE])
            users: set[int] = set()
            for reaction in message.reactions if message else []:
                if plain(str(reaction.emoji)) == emoji:
                    users = {u.id async for u in reaction.users() if u.id != bot_id and not u.bot}
            votes[(cand.id, value)] = users  # type: ignore[index]
    await run_db(queries.store_candidate_recount, bot.engine, votes)


async def close_iteration(bot: Any, iteration_id: int, by_user: int | None) -> Any:
    """Recount, build the next dataset version, and say so now (not at the next tick)."""
    await recount(bot, iteration_id)
    dataset = await run_db(
        it.finish_iteration,
        bot.engine,
        iteration_id,
        bot.settings.datasets_dir,
        bot.settings.limits,
        by_user,
    )
    await bot.notifier.deliver_loose()
    return dataset


class Iterate(commands.Cog):
    iterate = app_commands.Group(
        name="iterate",
        guild_only=True,
        description="Grow a model's dataset from its own best images",
    )
    check_seconds = 15.0

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        self._task: asyncio.Task[None] | None = None

    async def cog_load(self) -> None:
        if getattr(self.bot, "start_tasks", False):
            self._task = asyncio.create_task(self._deadlines())

    async def cog_unload(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _deadlines(self) -> None:
        await self.bot.wait_until_ready()
        while True:
            try:
                for iteration_id in await run_db(it.due_iterations, self.bot.engine):  # type: ignore[attr-defined]
                    with contextlib.suppress(it.NothingToFinish):
                        await close_iteration(self.bot, iteration_id, None)
            except Exception:
                log.exception("iteration deadline check failed")
            await asyncio.sleep(getattr(self.bot.voting, "check_seconds", self.check_seconds))  # type: ignore[attr-defined]

    @iterate.command(name="start", description="Render candidates with a model to curate")
    @app_commands.describe(
        model="A finalized model",
        count="How many candidates (≤ 40)",
        contexts="Extra contexts, comma separated (e.g. at a café, in space)",
    )
    @app_commands.autocomplete(model=model_choices)
    async def start(
        self,
        interaction: discord.Interaction,
        model: int,
        count: app_commands.Range[int, 1, it.MAX_CANDIDATES] = 20,
        contexts: app_commands.Range[str, 1, 1000] | None = None,
    ) -> None:
        await interaction.response.defer(ephemeral=True)
        bot = atelier(interaction)
        guild = await run_db(queries.guild_settings, bot.engine, interaction.guild_id)
        require_worker_time(interaction.user, guild)
        job = await run_db(queries.get_job, bot.engine, model, interaction.guild_id)
        require_visible(interaction, job)  # a model of a channel they cannot see is not theirs
        try:
            iteration_id = await run_db(
                queries.request_iteration,
                bot.engine,
                bot.settings.limits.renders_per_member,
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id,
                user_id=interaction.user.id,
                job_id=model,
                count=count,
                contexts=(contexts or "").split(","),
            )
        except it.IterationRefused as error:
            raise BadInput(f"Cannot iterate: {error}.") from None
        await interaction.followup.send(
            f"Iteration #{iteration_id} queued: {count} candidates; a thread opens here when a "
            "worker has rendered them.",
            ephemeral=True,
        )

    @iterate.command(name="finish", description="Close an iteration's vote now (its owner)")
    @app_commands.describe(iteration="The iteration id")
    async def finish(self, interaction: discord.Interaction, iteration: int) -> None:
        await interaction.response.defer(ephemeral=True)
        bot = atelier(interaction)
        found = await run_db(it.get_iteration, bot.engine, iteration)
        if found is None or found.guild_id not in (None, interaction.guild_id):
            raise NotFound(f"There is no iteration #{iteration}.")
        guild = await run_db(queries.guild_settings, bot.engine, interaction.guild_id)
        if found.user_id != interaction.user.id and not member_is_manager(interaction.user, guild):
            raise BadInput("Only the iteration's owner or a manager can finish it.")
        try:
            dataset = await close_iteration(bot, iteration, interaction.user.id)
        except it.NothingToFinish:
            raise BadInput(
                f"Iteration #{iteration} is {found.state}, not waiting for votes."
            ) from None
        except CountUnreadable:
            raise BadInput(
                "Discord did not give me the votes just now; nothing was closed. Try again soon."
            ) from None
        text = (
            f"Iteration #{iteration} finished: dataset `{dataset.id[:12]}` "
            f"({dataset.images} images)."
            if dataset
            else f"Iteration #{iteration} finished; nothing was kept."
        )
        await interaction.followup.send(text, ephemeral=True)

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        await self._reaction(payload, True)

    @commands.Cog.listener()
    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        await self._reaction(payload, False)

    async def _reaction(self, payload: discord.RawReactionActionEvent, on: bool) -> None:
        """A number reaction on a candidate page: keep (or, on the page's second message,
        discard) that candidate."""
        bot: Any = self.bot
        if bot.user is not None and payload.user_id == bot.user.id:
            return
        if payload.member is not None and payload.member.bot:
            return  # only members vote
        numbers = [plain(n) for n in NUMBER_EMOJI]
        emoji = plain(str(payload.emoji))
        if emoji not in numbers:
            return
        page = await run_db(it.page_of_message, bot.engine, payload.message_id)
        if page is None:
            return
        value, cands = page
        index = numbers.index(emoji)
        if index < len(cands):
            await run_db(
                it.record_candidate_vote,
                bot.engine,
                cands[index].id,
                payload.user_id,  # type: ignore[arg-type]
                value,
                on,
            )
