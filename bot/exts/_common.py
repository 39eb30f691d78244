"""Small helpers the command extensions share."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands

from bot import queries
from bot.db import run_db
from bot.render import STATE_LABEL

if TYPE_CHECKING:
    from bot.client import AtelierBot


def atelier(interaction: discord.Interaction) -> AtelierBot:
    return interaction.client  # type: ignore[return-value]


async def job_choices(
    interaction: discord.Interaction, current: str, *, own_only: bool
) -> list[app_commands.Choice[int]]:
    """A member's jobs (or the guild's, for status and for managers), at most 25."""
    bot = atelier(interaction)
    guild = await run_db(queries.guild_settings, bot.engine, interaction.guild_id)
    from bot.permissions import member_is_manager

    user_id = (
        interaction.user.id if own_only and not member_is_manager(interaction.user, guild) else None
    )
    rows = await run_db(
        queries.jobs_for_choice, bot.engine, interaction.guild_id or 0, user_id, current
    )
    return [
        app_commands.Choice(name=f"#{i} {name} ({STATE_LABEL.get(s, s)})"[:100], value=i)
        for i, name, s in rows
    ][:25]
