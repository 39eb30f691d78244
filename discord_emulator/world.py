"""State changes shared by REST handlers and the scripting API; each one dispatches its event.

Length: every state change with its gateway event, so none can change state silently.
"""

from __future__ import annotations

import mimetypes
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import discord_emulator.errors as E

from .mentions import pings
from .state import (
    MIB,
    Attachment,
    Channel,
    Guild,
    Member,
    Message,
    P,
    User,
    emoji_payload,
    snowflake,
)

Dispatch = Callable[[str, dict[str, Any]], None]
NewFile = tuple[str, bytes, str | None]  # filename, data, content type

MAX_CONTENT = 2000
MAX_FILES = 10
MAX_REQUEST_BYTES = 25 * MIB
MAX_EMBEDS = 10
MAX_EMBED_CHARS = 6000
MAX_NONCE = 25
NONCE_SECONDS = 300.0
"""How long Discord remembers an enforced nonce ("the past few minutes")."""


class World:
    def __init__(
        self,
        dispatch: Dispatch,
        base_url: Callable[[], str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dispatch = dispatch
        self.base_url = base_url
        self.clock = clock
        self.users: dict[int, User] = {}
        self.guilds: dict[int, Guild] = {}
        self.messages: dict[int, Message] = {}
        self.cdn: dict[int, Attachment] = {}
        self.cdn_fetches: Counter[int] = Counter()  # attachment id -> downloads served
        self.nonces: dict[tuple[int, int, str], tuple[int, float]] = {}
        self.nonce_seconds = NONCE_SECONDS
        self.bot = self.add_user("Atelier", bot=True)
        self.application_id = self.bot.id

    # --- lookups -------------------------------------------------------------------------
    def add_user(self, name: str, bot: bool = False) -> User:
        user = User(snowflake(), name, bot=bot, global_name=None if bot else name.title())
        self.users[user.id] = user
        return user

    def channel(self, channel_id: int) -> tuple[Guild, Channel]:
        for guild in self.guilds.values():
            if channel_id in guild.channels:
                return guild, guild.channels[channel_id]
        raise E.not_found(E.UNKNOWN_CHANNEL, "Channel")

    def message(self, channel_id: int, message_id: int) -> Message:
        msg = self.messages.get(message_id)
        if msg is None or msg.deleted or msg.channel_id != channel_id:
            raise E.not_found(E.UNKNOWN_MESSAGE, "Message")
        return msg

    def guild(self, guild_id: int) -> Guild:
        if guild_id not in self.guilds:
            raise E.not_found(E.UNKNOWN_GUILD, "Guild")
        return self.guilds[guild_id]

    def require(self, user_id: int, channel_id: int, *needed: int) -> None:
        guild, channel = self.channel(channel_id)
        perms = guild.permissions_in(user_id, channel)
        if not perms & P.VIEW_CHANNEL:
            raise E.missing_access()
        for bit in needed:
            if not perms & bit:
                raise E.forbidden()

    def member_payload(
        self, guild: Guild, user_id: int, channel: Channel | None = None
    ) -> dict[str, Any]:
        member = guild.members.get(user_id) or Member(self.users[user_id])
        out = member.payload()
        if channel is not None:
            out["permissions"] = str(guild.permissions_in(user_id, channel))
        return out

    # --- messages ------------------------------------------------------------------------
    def make_attachments(
        self,
        channel_id: int,
        files: list[NewFile],
        limit: int,
        descriptions: dict[int, str] | None = None,
    ) -> list[Attachment]:
        if len(files) > MAX_FILES:
            raise E.form_error(
                "files", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_FILES} or fewer in length."
            )
        if sum(len(f[1]) for f in files) > MAX_REQUEST_BYTES:
            raise E.too_large()
        out = []
        for i, (name, data, ctype) in enumerate(files):
            if len(data) > limit:
                raise E.too_large()
            aid = snowflake()
            url = f"{self.base_url()}/attachments/{channel_id}/{aid}/{quote(name)}"
            ctype = ctype or mimetypes.guess_type(name)[0]
            if ctype == "application/octet-stream":
                ctype = mimetypes.guess_type(name)[0] or ctype
            att = Attachment(aid, name, data, url, ctype, (descriptions or {}).get(i))
            self.cdn[aid] = att
            out.append(att)
        return out

    @staticmethod
    def check_body(content: str | None, embeds: list[dict[str, Any]] | None) -> None:
        if content is not None and len(content) > MAX_CONTENT:
            raise E.form_error(
                "content", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CONTENT} or fewer in length."
            )
        if embeds:
            if len(embeds) > MAX_EMBEDS:
                raise E.form_error(
                    "embeds", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_EMBEDS} or fewer in length."
                )
            if _embed_chars(embeds) > MAX_EMBED_CHARS:
                raise E.form_error(
                    "embeds", "MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds maximum size of 6000"
                )

    def create_message(
        self,
        author: User,
        channel_id: int,
        payload: dict[str, Any],
        files: list[NewFile] | None = None,
        *,
        check_perms: bool = True,
        webhook_id: int | None = None,
        msg_type: int = 0,
        dispatch: bool = True,
    ) -> Message:
        guild, channel = self.channel(channel_id)
        files = files or []
        if check_perms:
            send = P.SEND_MESSAGES_IN_THREADS if channel.is_thread else P.SEND_MESSAGES
            needed = [send] + ([P.ATTACH_FILES] if files else [])
            self.require(author.id, channel_id, *needed)
        nonce = self.check_nonce(payload)
        existing = self.nonce_message(author.id, channel_id, nonce, payload)
        if existing is not None:
            return existing
        content = payload.get("content") or ""
        embeds = payload.get("embeds") or []
        self.check_body(content, embeds)
        flags = int(payload.get("flags") or 0)
        if not (
            content
            or embeds
            or files
            or payload.get("components")
            or flags & 128
            or payload.get("sticker_ids")
            or payload.get("poll")
        ):
            raise DiscordErrorEmpty()
        descriptions = {
            int(a.get("id", i)): a["description"]
            for i, a in enumerate(payload.get("attachments") or [])
            if a.get("description")
        }
        atts = self.make_attachments(channel_id, files, guild.attachment_size_limit, descriptions)
        ref = (payload.get("message_reference") or {}).get("message_id")
        msg = Message(
            snowflake(),
            channel_id,
            guild.id,
            author,
            content,
            embeds,
            payload.get("components") or [],
            atts,
            flags=int(payload.get("flags") or 0),
            webhook_id=webhook_id,
            application_id=self.application_id if webhook_id else None,
            type=msg_type if not ref else 19,
            reference_id=int(ref) if ref else None,
            nonce=nonce,
        )
        self.set_pings(msg, payload.get("allowed_mentions"))
        self.messages[msg.id] = msg
        if nonce is not None:
            self.nonces[(author.id, channel_id, nonce)] = (msg.id, self.clock())
        if not msg.ephemeral:
            channel.message_ids.append(msg.id)
            channel.last_message_id = msg.id
            if channel.archived:
                channel.archived = False
                self.dispatch("THREAD_UPDATE", channel.payload())
        if dispatch and not msg.ephemeral:
            self.dispatch("MESSAGE_CREATE", self.message_event(msg))
        return msg

    def set_pings(self, msg: Message, allowed: dict[str, Any] | None) -> None:
        """Record whom the message pings (Discord's `allowed_mentions` rules)."""
        found = pings(msg.content, allowed)
        msg.mention_users = [self.users[u].payload() for u in found.users if u in self.users]
        msg.mention_roles = found.roles
        msg.mention_everyone = found.everyone

    @staticmethod
    def check_nonce(payload: dict[str, Any]) -> str | None:
        nonce = payload.get("nonce")
        if nonce is None:
            return None
        nonce = str(nonce)
        if len(nonce) > MAX_NONCE:
            raise E.form_error(
                "nonce", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_NONCE} or fewer in length."
            )
        return nonce

    def nonce_message(
        self, author_id: int, channel_id: int, nonce: str | None, payload: dict[str, Any]
    ) -> Message | None:
        """With `enforce_nonce`, a create that repeats a recent nonce of the same author in the
        same channel returns the message made the first time (no new message, no event)."""
        if nonce is None or not payload.get("enforce_nonce"):
            return None
        seen = self.nonces.get((author_id, channel_id, nonce))
        if seen is None or self.clock() - seen[1] > self.nonce_seconds:
            return None
        msg = self.messages.get(seen[0])
        return msg if msg is not None and not msg.deleted else None

    def message_event(self, msg: Message) -> dict[str, Any]:
        out = msg.payload(self.bot.id)
        if msg.guild_id:
            guild = self.guilds[msg.guild_id]
            out["guild_id"] = str(msg.guild_id)
            if not msg.webhook_id and msg.author.id in guild.members:
                out["member"] = guild.members[msg.author.id].payload(with_user=False)
        return out

    def rest_message(self, msg: Message) -> dict[str, Any]:
        out = msg.payload(self.bot.id)
        if msg.thread_id:
            _guild, thread = self.channel(msg.thread_id)
            out["thread"] = thread.payload()
        return out

    def edit_message(
        self, msg: Message, payload: dict[str, Any], files: list[NewFile] | None = None
    ) -> Message:
        guild, _channel = self.channel(msg.channel_id)
        if "content" in payload:
            self.check_body(payload["content"], None)
            msg.content = payload["content"] or ""
        if "embeds" in payload:
            self.check_body(None, payload["embeds"])
            msg.embeds = payload["embeds"] or []
        if "components" in payload:
            msg.components = payload["components"] or []
        if "flags" in payload and payload["flags"] is not None:
            msg.flags = (msg.flags & 64) | (int(payload["flags"]) & ~128)
        new = self.make_attachments(msg.channel_id, files or [], guild.attachment_size_limit)
        if payload.get("attachments") is not None:
            keep = {
                int(a["id"])
                for a in payload["attachments"]
                if "filename" not in a or int(a["id"]) > 1 << 30
            }
            msg.attachments = [a for a in msg.attachments if a.id in keep]
        if len(msg.attachments) + len(new) > MAX_FILES:
            raise E.form_error("attachments", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer.")
        msg.attachments.extend(new)
        msg.flags &= ~128  # no longer "thinking"
        msg.edited_at = time.time()
        if not msg.ephemeral:
            self.dispatch("MESSAGE_UPDATE", self.message_event(msg))
        return msg

    def delete_message(self, msg: Message) -> None:
        msg.deleted = True
        guild, channel = self.channel(msg.channel_id)
        if msg.id in channel.message_ids:
            channel.message_ids.remove(msg.id)
        if not msg.ephemeral:
            self.dispatch(
                "MESSAGE_DELETE",
                {"id": str(msg.id), "channel_id": str(msg.channel_id), "guild_id": str(guild.id)},
            )

    def history(
        self,
        channel_id: int,
        before: int | None = None,
        after: int | None = None,
        around: int | None = None,
        limit: int = 50,
    ) -> list[Message]:
        _guild, channel = self.channel(channel_id)
        ids = sorted(channel.message_ids)
        limit = max(1, min(100, limit))
        if around is not None:
            older = [i for i in ids if i < around][-(limit // 2) :] if limit > 1 else []
            newer = [i for i in ids if i >= around][: limit - len(older)]
            chosen = older + newer
        elif after is not None:
            chosen = [i for i in ids if i > after][:limit]
        else:
            chosen = [i for i in ids if before is None or i < before][-limit:]
        return [self.messages[i] for i in reversed(chosen)]

    # --- reactions -----------------------------------------------------------------------
    def add_reaction(self, user_id: int, msg: Message, key: str, check_perms: bool = True) -> None:
        users = msg.reactions.setdefault(key, [])
        if check_perms:
            needed = [P.READ_MESSAGE_HISTORY] + ([] if users else [P.ADD_REACTIONS])
            self.require(user_id, msg.channel_id, *needed)
        if user_id in users:
            return
        users.append(user_id)
        guild = self.guilds[msg.guild_id] if msg.guild_id else None
        data: dict[str, Any] = {
            "user_id": str(user_id),
            "channel_id": str(msg.channel_id),
            "message_id": str(msg.id),
            "emoji": emoji_payload(key),
            "burst": False,
            "type": 0,
            "message_author_id": str(msg.author.id),
            "burst_colors": [],
        }
        if guild:
            data["guild_id"] = str(guild.id)
            data["member"] = self.member_payload(guild, user_id)
        self.dispatch("MESSAGE_REACTION_ADD", data)

    def remove_reaction(self, user_id: int, msg: Message, key: str) -> None:
        users = msg.reactions.get(key, [])
        if user_id not in users:
            return
        users.remove(user_id)
        if not users:
            del msg.reactions[key]
        data: dict[str, Any] = {
            "user_id": str(user_id),
            "channel_id": str(msg.channel_id),
            "message_id": str(msg.id),
            "emoji": emoji_payload(key),
            "burst": False,
            "type": 0,
        }
        if msg.guild_id:
            data["guild_id"] = str(msg.guild_id)
        self.dispatch("MESSAGE_REACTION_REMOVE", data)

    # --- threads -------------------------------------------------------------------------
    def create_thread(
        self,
        user_id: int,
        channel_id: int,
        name: str,
        *,
        message_id: int | None = None,
        thread_type: int = 11,
        auto_archive_duration: int = 1440,
        check_perms: bool = True,
    ) -> Channel:
        guild, parent = self.channel(channel_id)
        if parent.is_thread:
            raise E.DiscordError(400, 50024, "Cannot execute action on this channel type")
        if check_perms:
            need = P.CREATE_PUBLIC_THREADS if thread_type == 11 else P.CREATE_PRIVATE_THREADS
            self.require(user_id, channel_id, need)
        if not name or len(name) > 100:
            raise E.form_error("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100.")
        if auto_archive_duration not in (60, 1440, 4320, 10080):
            raise E.form_error(
                "auto_archive_duration",
                "BASE_TYPE_CHOICES",
                "Value must be one of {60, 1440, 4320, 10080}.",
            )
        if message_id is not None:
            msg = self.message(channel_id, message_id)
            if msg.thread_id:
                raise E.DiscordError(
                    400,
                    E.THREAD_ALREADY_CREATED,
                    "A thread has already been created for this message",
                )
            thread_id = msg.id
            thread_type = 11
        else:
            thread_id = snowflake()
        thread = Channel(
            thread_id,
            guild.id,
            name,
            type=thread_type,
            parent_id=channel_id,
            owner_id=user_id,
            auto_archive_duration=auto_archive_duration,
        )
        guild.channels[thread.id] = thread
        payload = thread.payload()
        payload["newly_created"] = True
        self.dispatch("THREAD_CREATE", payload)
        if message_id is not None:
            msg.thread_id = thread.id
            self.dispatch("MESSAGE_UPDATE", {**self.message_event(msg), "thread": payload})
        return thread

    def update_channel(self, channel: Channel, payload: dict[str, Any]) -> Channel:
        for key in ("name", "topic", "archived", "locked", "auto_archive_duration", "position"):
            if key in payload and payload[key] is not None:
                setattr(channel, key, payload[key])
        event = "THREAD_UPDATE" if channel.is_thread else "CHANNEL_UPDATE"
        self.dispatch(event, channel.payload())
        return channel


class DiscordErrorEmpty(E.DiscordError):
    def __init__(self) -> None:
        super().__init__(400, 50006, "Cannot send an empty message")


def _embed_chars(embeds: list[dict[str, Any]]) -> int:
    total = 0
    for e in embeds:
        total += len(e.get("title") or "") + len(e.get("description") or "")
        total += len((e.get("footer") or {}).get("text") or "")
        total += len((e.get("author") or {}).get("name") or "")
        for f in e.get("fields") or []:
            total += len(f.get("name") or "") + len(f.get("value") or "")
    return total
