"""Reactions on grids become votes (raw events: the messages need not be cached)."""

from __future__ import annotations

import discord
from discord.ext import commands


class Votes(commands.Cog):
    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        await self.bot.voting.on_reaction(payload, on=True)  # type: ignore[attr-defined]

    @commands.Cog.listener()
    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        await self.bot.voting.on_reaction(payload, on=False)  # type: ignore[attr-defined]


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Votes(bot))
