"""In-memory Discord world: users, guilds, roles, channels, threads, messages, reactions.

Length: one dataclass per Discord object with its JSON form, kept together as the data model.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DISCORD_EPOCH_MS = 1420070400000
MIB = 1024 * 1024


class P:
    """Permission bits (subset Atelier cares about; values as in Discord's docs)."""

    CREATE_INSTANT_INVITE = 1 << 0
    KICK_MEMBERS = 1 << 1
    BAN_MEMBERS = 1 << 2
    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    ADD_REACTIONS = 1 << 6
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    MENTION_EVERYONE = 1 << 17
    USE_EXTERNAL_EMOJIS = 1 << 18
    CHANGE_NICKNAME = 1 << 26
    MANAGE_ROLES = 1 << 28
    USE_APPLICATION_COMMANDS = 1 << 31
    MANAGE_THREADS = 1 << 34
    CREATE_PUBLIC_THREADS = 1 << 35
    CREATE_PRIVATE_THREADS = 1 << 36
    SEND_MESSAGES_IN_THREADS = 1 << 38
    ALL = (1 << 53) - 1

    @classmethod
    def by_name(cls, name: str) -> int:
        return int(getattr(cls, name.upper()))


DEFAULT_EVERYONE = (
    P.CREATE_INSTANT_INVITE
    | P.ADD_REACTIONS
    | P.VIEW_CHANNEL
    | P.SEND_MESSAGES
    | P.EMBED_LINKS
    | P.ATTACH_FILES
    | P.READ_MESSAGE_HISTORY
    | P.USE_EXTERNAL_EMOJIS
    | P.CHANGE_NICKNAME
    | P.USE_APPLICATION_COMMANDS
    | P.CREATE_PUBLIC_THREADS
    | P.CREATE_PRIVATE_THREADS
    | P.SEND_MESSAGES_IN_THREADS
)

_counter = itertools.count()


def snowflake() -> int:
    ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
    return (ms << 22) | (next(_counter) % 4096)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat()


def perm_value(perms: int | str | list[str] | None) -> int:
    if perms is None:
        return 0
    if isinstance(perms, int):
        return perms
    if isinstance(perms, str):
        return P.by_name(perms)
    return sum(P.by_name(p) for p in perms)


@dataclass
class User:
    id: int
    username: str
    bot: bool = False
    global_name: str | None = None

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
        }

    @property
    def display_name(self) -> str:
        return self.global_name or self.username


@dataclass
class Role:
    id: int
    name: str
    permissions: int
    position: int = 0
    color: int = 0
    managed: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": self.color,
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "managed": self.managed,
            "mentionable": False,
            "flags": 0,
            "colors": {
                "primary_color": self.color,
                "secondary_color": None,
                "tertiary_color": None,
            },
        }


@dataclass
class Member:
    user: User
    roles: list[int] = field(default_factory=list)
    nick: str | None = None
    joined_at: float = field(default_factory=time.time)

    def payload(self, with_user: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "roles": [str(r) for r in self.roles],
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "joined_at": iso(self.joined_at),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        if with_user:
            out["user"] = self.user.payload()
        return out


@dataclass
class Overwrite:
    id: int
    type: int  # 0 role, 1 member
    allow: int = 0
    deny: int = 0

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "type": self.type,
            "allow": str(self.allow),
            "deny": str(self.deny),
        }


@dataclass
class Channel:
    id: int
    guild_id: int
    name: str
    type: int = 0  # 0 text, 4 category, 11 public thread, 12 private thread
    position: int = 0
    topic: str | None = None
    parent_id: int | None = None
    overwrites: dict[int, Overwrite] = field(default_factory=dict)
    owner_id: int | None = None
    archived: bool = False
    locked: bool = False
    auto_archive_duration: int = 1440
    created_at: float = field(default_factory=time.time)
    message_ids: list[int] = field(default_factory=list)
    last_message_id: int | None = None

    @property
    def is_thread(self) -> bool:
        return self.type in (10, 11, 12)

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id),
            "name": self.name,
            "parent_id": str(self.parent_id) if self.parent_id else None,
            "last_message_id": str(self.last_message_id) if self.last_message_id else None,
            "rate_limit_per_user": 0,
            "flags": 0,
            "nsfw": False,
        }
        if self.is_thread:
            out.update(
                {
                    "owner_id": str(self.owner_id),
                    "message_count": len(self.message_ids),
                    "member_count": 1,
                    "total_message_sent": len(self.message_ids),
                    "thread_metadata": {
                        "archived": self.archived,
                        "locked": self.locked,
                        "auto_archive_duration": self.auto_archive_duration,
                        "archive_timestamp": iso(self.created_at),
                        "create_timestamp": iso(self.created_at),
                        "invitable": True,
                    },
                }
            )
        else:
            out.update(
                {
                    "position": self.position,
                    "topic": self.topic,
                    "permission_overwrites": [o.payload() for o in self.overwrites.values()],
                    "default_auto_archive_duration": 1440,
                }
            )
        return out


@dataclass
class Attachment:
    id: int
    filename: str
    data: bytes
    url: str
    content_type: str | None = None
    description: str | None = None
    ephemeral: bool = False

    @property
    def size(self) -> int:
        return len(self.data)

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url,
            "description": self.description,
        }
        if self.content_type:
            out["content_type"] = self.content_type
        if self.ephemeral:
            out["ephemeral"] = True
        dims = image_size(self.data)
        if dims:
            out["width"], out["height"] = dims
        return out


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height of a PNG (or None), without Pillow."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def emoji_key(raw: str) -> str:
    """Normalise a URL emoji (unicode, ``name:id`` or ``a:name:id``) into a dict key."""
    parts = raw.split(":")
    if len(parts) >= 2 and parts[-1].isdigit():
        return f"{parts[-2]}:{parts[-1]}"
    return raw


def emoji_payload(key: str) -> dict[str, Any]:
    if ":" in key:
        name, eid = key.split(":")
        return {"id": eid, "name": name, "animated": False}
    return {"id": None, "name": key}


@dataclass
class Message:
    id: int
    channel_id: int
    guild_id: int | None
    author: User
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    reactions: dict[str, list[int]] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    edited_at: float | None = None
    type: int = 0
    flags: int = 0
    webhook_id: int | None = None
    application_id: int | None = None
    thread_id: int | None = None
    reference_id: int | None = None
    deleted: bool = False
    interaction_id: int | None = None
    nonce: str | None = None
    mention_users: list[dict[str, Any]] = field(default_factory=list)
    mention_roles: list[int] = field(default_factory=list)
    mention_everyone: bool = False

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & 64)

    def payload(self, me_id: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "type": self.type,
            "author": self.author.payload(),
            "content": self.content,
            "timestamp": iso(self.created_at),
            "edited_timestamp": iso(self.edited_at),
            "tts": False,
            "mention_everyone": self.mention_everyone,
            "mentions": self.mention_users,
            "mention_roles": [str(r) for r in self.mention_roles],
            "attachments": [a.payload() for a in self.attachments],
            "embeds": self.embeds,
            "components": self.components,
            "pinned": False,
            "flags": self.flags,
            "reactions": [
                {
                    "emoji": emoji_payload(k),
                    "count": len(v),
                    "me": me_id in v,
                    "me_burst": False,
                    "count_details": {"burst": 0, "normal": len(v)},
                    "burst_colors": [],
                }
                for k, v in self.reactions.items()
                if v
            ],
        }
        if self.nonce is not None:
            out["nonce"] = self.nonce
        if self.webhook_id:
            out["webhook_id"] = str(self.webhook_id)
        if self.application_id:
            out["application_id"] = str(self.application_id)
        if self.reference_id:
            out["message_reference"] = {
                "type": 0,
                "message_id": str(self.reference_id),
                "channel_id": str(self.channel_id),
            }
        return out


@dataclass
class Guild:
    id: int
    name: str
    owner_id: int
    roles: dict[int, Role] = field(default_factory=dict)
    channels: dict[int, Channel] = field(default_factory=dict)
    members: dict[int, Member] = field(default_factory=dict)
    attachment_size_limit: int = 10 * MIB
    premium_tier: int = 0

    @property
    def everyone(self) -> Role:
        return self.roles[self.id]

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [r.payload() for r in self.roles.values()],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "application_id": None,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "premium_tier": self.premium_tier,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "nsfw_level": 0,
            "nsfw": False,
            "premium_progress_bar_enabled": False,
            "max_members": 500000,
            "max_video_channel_users": 25,
            "incidents_data": None,
        }

    def create_payload(self) -> dict[str, Any]:
        out = self.payload()
        out.update(
            {
                "joined_at": iso(time.time()),
                "large": False,
                "unavailable": False,
                "member_count": len(self.members),
                "voice_states": [],
                "presences": [],
                "members": [m.payload() for m in self.members.values()],
                "channels": [c.payload() for c in self.channels.values() if not c.is_thread],
                "threads": [
                    c.payload() for c in self.channels.values() if c.is_thread and not c.archived
                ],
                "stage_instances": [],
                "guild_scheduled_events": [],
                "soundboard_sounds": [],
            }
        )
        return out

    def base_permissions(self, user_id: int) -> int:
        if user_id == self.owner_id:
            return P.ALL
        member = self.members.get(user_id)
        perms = self.everyone.permissions
        if member:
            for rid in member.roles:
                if rid in self.roles:
                    perms |= self.roles[rid].permissions
        return P.ALL if perms & P.ADMINISTRATOR else perms

    def permissions_in(self, user_id: int, channel: Channel) -> int:
        """Discord's algorithm: base, then @everyone / role / member overwrites.

        Threads use their parent's overwrites; without View Channel nothing is granted.
        """
        perms = self.base_permissions(user_id)
        if perms & P.ADMINISTRATOR or perms == P.ALL:
            return P.ALL
        target = channel
        if channel.is_thread and channel.parent_id in self.channels:
            target = self.channels[channel.parent_id]
        ow = target.overwrites
        if self.id in ow:
            perms = (perms & ~ow[self.id].deny) | ow[self.id].allow
        member = self.members.get(user_id)
        role_ids = member.roles if member else []
        allow = deny = 0
        for rid in role_ids:
            if rid in ow:
                allow |= ow[rid].allow
                deny |= ow[rid].deny
        perms = (perms & ~deny) | allow
        if user_id in ow:
            perms = (perms & ~ow[user_id].deny) | ow[user_id].allow
        if not perms & P.VIEW_CHANNEL:
            return 0
        if not perms & P.SEND_MESSAGES and not channel.is_thread:
            perms &= ~(P.MENTION_EVERYONE | P.ATTACH_FILES | P.EMBED_LINKS)
        return perms
