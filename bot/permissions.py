"""Who may do what. Discord's `default_member_permissions` is only a display default, so every
rule is enforced here, from the job owner, the member's permissions and the guild's settings."""

from __future__ import annotations

from collections.abc import Collection

import discord

from bot.errors import NotAllowed
from storage.models import GuildSettings, Job


def guild_allowed(guild_id: int | None, allowed: Collection[int]) -> bool:
    """An empty allow-list admits every guild; DMs (no guild) are never allowed."""
    return guild_id is not None and (not allowed or guild_id in allowed)


def is_manager(manage_guild: bool, role_ids: Collection[int], manager_role_id: int | None) -> bool:
    """Manage Server, or the guild's configured manager role."""
    return manage_guild or (manager_role_id is not None and manager_role_id in role_ids)


def may_use_workers(
    role_ids: Collection[int], trainer_role_ids: Collection[int], manager: bool
) -> bool:
    """The one rule for worker time (training, renders) and the datasets it trains on: a
    trainer role, or everyone when no trainer role is set; managers always."""
    return manager or not trainer_role_ids or bool(set(role_ids) & set(trainer_role_ids))


def may_manage_job(user_id: int, owner_id: int, manager: bool) -> bool:
    """Cancel, finalize, retry: the job's owner or a manager."""
    return manager or user_id == owner_id


def member_roles(member: discord.abc.User) -> list[int]:
    return [role.id for role in getattr(member, "roles", [])]


def member_is_manager(member: discord.abc.User, guild: GuildSettings | None) -> bool:
    perms = getattr(member, "guild_permissions", None)
    manage = bool(perms and perms.manage_guild)
    return is_manager(manage, member_roles(member), guild.manager_role_id if guild else None)


WORKER_TIME_REFUSED = (
    "This server keeps its workers (`/train`, `/generate`, `/iterate`, `/compare`, "
    "`/dataset add`) for its trainer roles, and you have none of them."
)


def require_worker_time(member: discord.abc.User, guild: GuildSettings | None) -> None:
    """Every command that queues worker time (`/train`, `/train from:`, `/generate`,
    `/iterate start`, `/compare`) or stores a dataset for training checks this one rule."""
    trainer_roles = guild.trainer_role_ids if guild else []
    if not may_use_workers(member_roles(member), trainer_roles, member_is_manager(member, guild)):
        raise NotAllowed(WORKER_TIME_REFUSED)


def require_job_manager(
    member: discord.abc.User, job: Job, guild: GuildSettings | None, action: str
) -> None:
    if not may_manage_job(member.id, job.owner_id, member_is_manager(member, guild)):
        raise NotAllowed(
            f"Only the job's owner (<@{job.owner_id}>) or a manager may {action} job #{job.id}."
        )


def require_manage_server(member: discord.abc.User) -> None:
    """Atelier's settings (who trains, who manages): Manage Server alone, so the manager role
    can never widen itself (e.g. re-point itself to @everyone)."""
    perms = getattr(member, "guild_permissions", None)
    if not (perms and perms.manage_guild):
        raise NotAllowed("Changing Atelier's settings needs the Manage Server permission.")
