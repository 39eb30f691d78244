"""`/atelier settings`: a guild's results channel, vote window, keep count, roles, job limit."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot import queries
from bot.db import run_db
from bot.exts._common import atelier
from bot.permissions import require_manage_server
from storage.models import GuildSettings


def describe(row: GuildSettings | None, defaults: object) -> str:
    def value(field: str, fallback: object) -> object:
        got = getattr(row, field, None) if row else None
        return got if got not in (None, []) else f"{fallback} (default)"

    roles = " ".join(f"<@&{r}>" for r in (row.trainer_role_ids if row else [])) or "everyone"
    channel = (
        f"<#{row.results_channel_id}>"
        if row and row.results_channel_id
        else "the job's channel (default)"
    )
    manager = f"<@&{row.manager_role_id}>" if row and row.manager_role_id else "Manage Server only"
    return (
        f"Results channel: {channel}\n"
        f"Vote window: {value('vote_window_hours', defaults.vote_window_hours)} h\n"  # type: ignore[attr-defined]
        f"Checkpoints kept: {value('keep_checkpoints', defaults.keep_checkpoints)}\n"  # type: ignore[attr-defined]
        f"Jobs per member: {value('jobs_per_member', defaults.limits.jobs_per_member)}\n"  # type: ignore[attr-defined]
        f"Trainer roles: {roles}\nManager role: {manager}"
    )


class Admin(commands.Cog):
    atelier_group = app_commands.Group(
        name="atelier",
        description="Atelier administration",
        guild_only=True,
        default_permissions=discord.Permissions(manage_guild=True),
    )

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot

    @atelier_group.command(name="settings", description="Show or change this server's settings")
    @app_commands.describe(
        results_channel="Where finalized models are announced",
        vote_window_hours="Hours a vote stays open",
        keep="Checkpoints kept after the vote",
        jobs_per_member="Queued + running training jobs per member",
        trainer_role="Add a role allowed to train (none set: everyone may)",
        remove_trainer_role="Remove one trainer role",
        clear_trainer_roles="Let everyone train again",
        manager_role="Role that manages jobs (cancel, finalize, retry); not settings",
        clear_manager_role="No manager role: Manage Server only",
        clear_results_channel="Announce in each job's own channel again",
    )
    async def settings(
        self,
        interaction: discord.Interaction,
        results_channel: discord.TextChannel | None = None,
        vote_window_hours: app_commands.Range[float, 0.01, 720.0] | None = None,
        keep: app_commands.Range[int, 1, 10] | None = None,
        jobs_per_member: app_commands.Range[int, 1, 50] | None = None,
        trainer_role: discord.Role | None = None,
        remove_trainer_role: discord.Role | None = None,
        clear_trainer_roles: bool = False,
        manager_role: discord.Role | None = None,
        clear_manager_role: bool = False,
        clear_results_channel: bool = False,
    ) -> None:
        await interaction.response.defer(ephemeral=True)
        require_manage_server(interaction.user)  # Discord's default is only a display hint
        bot = atelier(interaction)
        guild_id = interaction.guild_id or 0
        row = await run_db(queries.guild_settings, bot.engine, guild_id)
        roles = [] if clear_trainer_roles else list(row.trainer_role_ids if row else [])
        if trainer_role is not None and trainer_role.id not in roles:
            roles.append(trainer_role.id)
        if remove_trainer_role is not None:
            roles = [r for r in roles if r != remove_trainer_role.id]
        clear = tuple(
            field
            for field, wanted in (
                ("manager_role_id", clear_manager_role),
                ("results_channel_id", clear_results_channel),
            )
            if wanted
        )
        row = await run_db(
            queries.update_guild_settings,
            bot.engine,
            guild_id,
            clear,
            results_channel_id=results_channel.id if results_channel else None,
            vote_window_hours=vote_window_hours,
            keep_checkpoints=keep,
            jobs_per_member=jobs_per_member,
            trainer_role_ids=roles,
            manager_role_id=manager_role.id if manager_role else None,
        )
        await interaction.followup.send(
            describe(row, bot.settings),
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Admin(bot))
