"""`/train lora from:<job> [change:key=value]`: the next version of a model (the `/train`
command calls in here)."""

from __future__ import annotations

import discord
from discord import app_commands

from bot import queries
from bot.db import run_db
from bot.exts._common import atelier, job_choices
from bot.permissions import require_worker_time
from storage import lineage


async def train_from(
    interaction: discord.Interaction, parent_id: int, change: str | None, name: str | None
) -> None:
    """`/train lora from:<job> [change:key=value]`: the next version of a model."""
    await interaction.response.defer(ephemeral=True, thinking=True)
    bot = atelier(interaction)
    guild = await run_db(queries.guild_settings, bot.engine, interaction.guild_id)
    require_worker_time(interaction.user, guild)
    limit = (
        guild.jobs_per_member
        if guild and guild.jobs_per_member
        else bot.settings.limits.jobs_per_member
    )
    child = await run_db(
        queries.next_version_job,
        bot.engine,
        parent_id,
        interaction.guild_id,
        interaction.channel_id,
        interaction.user.id,
        name,
        change,
        limit,
        dict(bot.settings.base_models),
    )
    await bot.notifier.process_job(child.id)  # type: ignore[arg-type]
    info = await run_db(lineage.lineage, bot.engine, child.id)
    current = await run_db(queries.get_job, bot.engine, child.id)  # type: ignore[arg-type]
    where = f"<#{current.thread_id}>" if current.thread_id else "the channel"
    await interaction.followup.send(
        f"Job #{child.id} is queued ({lineage.lineage_text(info)}); follow it in {where}.",
        ephemeral=True,
    )


async def from_choices(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[int]]:
    """Any job of the guild can be the parent of a next version (not only the member's)."""
    return await job_choices(interaction, current, own_only=False)
