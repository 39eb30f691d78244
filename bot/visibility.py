"""Who may see a model: a model belongs to the channel it was trained in.

A member may list, download (`/models get`), render with (`/generate`) or build on (`/iterate`,
`/compare`) a finalized model only when they can view the channel the job was started in
(Discord's own View Channel, overwrites included; a thread counts as its parent) — or they
manage the server. A channel the bot cannot find (deleted, or not cached) counts as not
visible. A finalized model is re-posted to the results channel only when its own channel is
visible to @everyone; otherwise the announcement stays in the job's channel.
"""

from __future__ import annotations

from typing import Any

import discord

from bot.errors import NotFound
from storage.models import Job


def _channel(guild: discord.Guild | None, channel_id: int | None) -> Any:
    if guild is None or channel_id is None:
        return None
    channel = guild.get_channel_or_thread(channel_id)
    if isinstance(channel, discord.Thread):
        return channel.parent
    return channel


def member_can_view(guild: discord.Guild | None, member: Any, channel_id: int | None) -> bool:
    """Can `member` see the channel with `channel_id` (Manage Server always can)?"""
    perms = getattr(member, "guild_permissions", None)
    if perms is not None and (perms.manage_guild or perms.administrator):
        return True
    channel = _channel(guild, channel_id)
    if channel is None or not isinstance(member, discord.Member):
        return False
    return channel.permissions_for(member).view_channel


def require_visible(interaction: discord.Interaction, job: Job) -> Job:
    """`job` when the member may see it, else the same `NotFound` as a job that does not exist
    (saying "you may not" would confirm it exists)."""
    if not member_can_view(interaction.guild, interaction.user, job.channel_id):
        raise NotFound(f"There is no job #{job.id} in this server.")
    return job


def visible_to_everyone(guild: discord.Guild | None, channel_id: int | None) -> bool:
    """Does @everyone see this channel (so a results-channel post reveals nothing)?"""
    channel = _channel(guild, channel_id)
    if guild is None or channel is None:
        return False
    return channel.permissions_for(guild.default_role).view_channel
