"""`/compare a b`: two models rendered side by side, and the members' 🅰️/🅱️ votes on the grid."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import queries
from bot.db import run_db
from bot.errors import BadInput
from bot.exts._common import atelier
from bot.exts.models import model_choices
from bot.permissions import require_worker_time
from bot.render_events import A_EMOJI, B_EMOJI, show_comparison_tally
from bot.visibility import require_visible
from bot.voting import plain
from storage import comparisons
from storage import iterations as it


class Compare(commands.Cog):
    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot

    @app_commands.command(name="compare", description="Render two models side by side")
    @app_commands.guild_only()
    @app_commands.describe(a="The first model (left)", b="The second model (right)")
    @app_commands.autocomplete(a=model_choices, b=model_choices)
    async def compare(self, interaction: discord.Interaction, a: int, b: int) -> None:
        await interaction.response.defer(ephemeral=True)
        bot = atelier(interaction)
        guild = await run_db(queries.guild_settings, bot.engine, interaction.guild_id)
        require_worker_time(interaction.user, guild)  # it costs worker time, like /train
        for job_id in (a, b):
            job = await run_db(queries.get_job, bot.engine, job_id, interaction.guild_id)
            require_visible(interaction, job)
        try:
            comparison = await run_db(
                queries.request_comparison,
                bot.engine,
                bot.settings.limits.renders_per_member,
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id,
                user_id=interaction.user.id,
                job_a=a,
                job_b=b,
            )
        except it.IterationRefused as error:
            raise BadInput(f"Cannot compare: {error}.") from None
        await interaction.followup.send(
            f"Comparison #{comparison} queued; the grid appears here when a worker renders it.",
            ephemeral=True,
        )

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        await self._reaction(payload, True)

    @commands.Cog.listener()
    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        await self._reaction(payload, False)

    async def _reaction(self, payload: discord.RawReactionActionEvent, on: bool) -> None:
        bot: Any = self.bot
        if bot.user is not None and payload.user_id == bot.user.id:
            return
        if payload.member is not None and payload.member.bot:
            return  # only members vote
        choice = {plain(A_EMOJI): "a", plain(B_EMOJI): "b"}.get(plain(str(payload.emoji)))
        if choice is None:
            return
        comparison = await run_db(comparisons.comparison_of_message, bot.engine, payload.message_id)
        if comparison is None:
            return
        await run_db(
            comparisons.record_comparison_vote, bot.engine, comparison, payload.user_id, choice, on
        )
        await show_comparison_tally(bot, comparison, payload.channel_id, payload.message_id)
