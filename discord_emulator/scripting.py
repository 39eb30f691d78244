"""Test-facing API: build the world, act as members, run commands, wait, read back.

Length: it is the whole vocabulary tests speak (one short method per member action).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .interactions import (
    APPLICATION_COMMAND,
    AUTOCOMPLETE,
    COMPONENT,
    MODAL_SUBMIT,
    InteractionHandle,
)
from .state import (
    DEFAULT_EVERYONE,
    Channel,
    Guild,
    Member,
    Message,
    Overwrite,
    P,
    Role,
    User,
    emoji_key,
    perm_value,
    snowflake,
)

if TYPE_CHECKING:
    from .world import World

UserRef = User | Member | int
ChannelRef = Channel | int
MessageRef = Message | int
FileSpec = tuple[str, bytes] | tuple[str, bytes, str]


@dataclass
class DefaultWorld:
    """Guild "Atelier Test" with #training, the bot, alice/bob/carol; carol is a Manager."""

    guild: Guild
    channel: Channel
    bot: User
    owner: User
    alice: User
    bob: User
    carol: User
    manager: Role


def _uid(user: UserRef) -> int:
    if isinstance(user, Member):
        return user.user.id
    return user.id if isinstance(user, User) else int(user)


def _cid(channel: ChannelRef) -> int:
    return channel.id if isinstance(channel, Channel) else int(channel)


class ScriptingMixin:
    world: World
    commands: dict[int | None, dict[str, dict[str, Any]]]
    interactions: dict[int, InteractionHandle]
    _changed: asyncio.Event

    def now(self) -> float:
        raise NotImplementedError

    # --- world building ------------------------------------------------------------------
    def create_user(self, name: str, bot: bool = False) -> User:
        return self.world.add_user(name, bot=bot)

    def create_guild(
        self, name: str, owner: UserRef | None = None, everyone_permissions: int = DEFAULT_EVERYONE
    ) -> Guild:
        owner_id = _uid(owner) if owner is not None else self.world.bot.id
        guild = Guild(snowflake(), name, owner_id)
        guild.roles[guild.id] = Role(guild.id, "@everyone", everyone_permissions)
        self.world.guilds[guild.id] = guild
        bot_role = Role(snowflake(), self.world.bot.username, 0, position=1, managed=True)
        guild.roles[bot_role.id] = bot_role
        guild.members[self.world.bot.id] = Member(self.world.bot, [bot_role.id])
        if owner is not None:
            guild.members[owner_id] = Member(self.world.users[owner_id])
        self.world.dispatch("GUILD_CREATE", guild.create_payload())
        return guild

    def create_channel(
        self,
        guild: Guild,
        name: str,
        *,
        type: int = 0,
        topic: str | None = None,
        parent_id: int | None = None,
    ) -> Channel:
        channel = Channel(
            snowflake(),
            guild.id,
            name,
            type=type,
            topic=topic,
            parent_id=parent_id,
            position=len(guild.channels),
        )
        guild.channels[channel.id] = channel
        self.world.dispatch("CHANNEL_CREATE", channel.payload())
        return channel

    def create_role(self, guild: Guild, name: str, permissions: int | list[str] = 0) -> Role:
        role = Role(snowflake(), name, perm_value(permissions), position=len(guild.roles))
        guild.roles[role.id] = role
        self.world.dispatch(
            "GUILD_ROLE_CREATE", {"guild_id": str(guild.id), "role": role.payload()}
        )
        return role

    def set_role_permissions(self, guild: Guild, role: Role, permissions: int | list[str]) -> None:
        role.permissions = perm_value(permissions)
        self.world.dispatch(
            "GUILD_ROLE_UPDATE", {"guild_id": str(guild.id), "role": role.payload()}
        )

    def add_member(self, guild: Guild, user: User, roles: list[Role] | None = None) -> Member:
        member = Member(user, [r.id for r in roles or []])
        guild.members[user.id] = member
        self.world.dispatch("GUILD_MEMBER_ADD", {**member.payload(), "guild_id": str(guild.id)})
        return member

    def set_member_roles(self, guild: Guild, user: UserRef, roles: list[Role]) -> None:
        member = guild.members[_uid(user)]
        member.roles = [r.id for r in roles]
        self.world.dispatch("GUILD_MEMBER_UPDATE", {**member.payload(), "guild_id": str(guild.id)})

    def set_permissions(
        self,
        channel: ChannelRef,
        target: UserRef | Role | Guild,
        *,
        allow: int | list[str] = 0,
        deny: int | list[str] = 0,
    ) -> None:
        """Channel permission overwrite, e.g. ``deny=["attach_files"]`` for the bot user.

        ``target`` is a role, a user/member, or the guild (meaning @everyone)."""
        _guild, ch = self.world.channel(_cid(channel))
        if ch.is_thread:
            raise ValueError("threads have no overwrites; set them on the parent")
        if isinstance(target, Guild | Role):
            tid, ttype = target.id, 0
        else:
            tid, ttype = _uid(target), 1
        ch.overwrites[tid] = Overwrite(tid, ttype, perm_value(allow), perm_value(deny))
        self.world.dispatch("CHANNEL_UPDATE", ch.payload())

    def update_guild(self, guild: Guild, **fields: Any) -> None:
        """E.g. ``attachment_size_limit=50 * MIB``, ``name=...``, ``premium_tier=2``."""
        for key, value in fields.items():
            if not hasattr(guild, key):
                raise AttributeError(key)
            setattr(guild, key, value)
        self.world.dispatch("GUILD_UPDATE", guild.payload())

    def create_thread(self, user: UserRef, channel: ChannelRef, name: str) -> Channel:
        """A member opens a public thread in `channel` (members then use commands in it)."""
        return self.world.create_thread(_uid(user), _cid(channel), name, check_perms=False)

    def expire_nonces(self) -> None:
        """Forget every enforced nonce, as Discord does after a few minutes: a client that
        comes back later (a late restart) gets a new message for a repeated nonce."""
        self.world.nonces.clear()

    # --- acting as members ---------------------------------------------------------------
    def post_message(
        self,
        user: UserRef,
        channel: ChannelRef,
        content: str = "",
        *,
        files: list[FileSpec] | None = None,
        embeds: list[dict[str, Any]] | None = None,
    ) -> Message:
        author = self.world.users[_uid(user)]
        specs = [(f[0], f[1], f[2] if len(f) > 2 else None) for f in files or []]  # type: ignore[misc]
        return self.world.create_message(
            author, _cid(channel), {"content": content, "embeds": embeds or []}, specs
        )

    def _msg(self, message: MessageRef) -> Message:
        mid = message.id if isinstance(message, Message) else int(message)
        msg = self.world.messages.get(mid)
        if msg is None or msg.deleted:
            raise KeyError(f"no message {mid}")
        return msg

    def add_reaction(self, user: UserRef, message: MessageRef, emoji: str) -> None:
        self.world.add_reaction(_uid(user), self._msg(message), emoji_key(emoji))

    def remove_reaction(self, user: UserRef, message: MessageRef, emoji: str) -> None:
        self.world.remove_reaction(_uid(user), self._msg(message), emoji_key(emoji))

    def reactions(self, message: MessageRef) -> dict[str, list[int]]:
        """Emoji → user ids, as stored."""
        return {k: list(v) for k, v in self._msg(message).reactions.items()}

    # --- interactions --------------------------------------------------------------------
    def find_command(self, guild: Guild, name: str, ctype: int = 1) -> dict[str, Any]:
        for scope in (guild.id, None):
            for cmd in self.commands.get(scope, {}).values():
                if cmd["name"] == name and int(cmd.get("type", 1)) == ctype:
                    return cmd
        raise LookupError(f"command {name!r} is not synced (guild or global)")

    def _start(
        self,
        itype: int,
        user: UserRef,
        channel: ChannelRef,
        data: dict[str, Any],
        message: Message | None = None,
    ) -> InteractionHandle:
        guild, ch = self.world.channel(_cid(channel))
        handle = InteractionHandle(
            self,
            itype,
            self.world.users[_uid(user)],
            guild,
            ch,  # type: ignore[arg-type]
            data,
            message,
        )
        self.interactions[handle.id] = handle
        self.world.dispatch("INTERACTION_CREATE", handle.payload())
        return handle

    async def run_slash_command(
        self,
        user: UserRef,
        channel: ChannelRef,
        command: str,
        options: dict[str, Any] | None = None,
        attachments: dict[str, FileSpec] | None = None,
    ) -> InteractionHandle:
        """``command`` is the full path, e.g. ``"train lora"`` (command, group, subcommand)."""
        data = self._command_data(user, channel, command, options or {}, attachments or {})
        return self._start(APPLICATION_COMMAND, user, channel, data)

    async def run_autocomplete(
        self,
        user: UserRef,
        channel: ChannelRef,
        command: str,
        focused: str,
        value: str = "",
        options: dict[str, Any] | None = None,
    ) -> InteractionHandle:
        opts = {**(options or {}), focused: value}
        data = self._command_data(user, channel, command, opts, {}, focused=focused)
        return self._start(AUTOCOMPLETE, user, channel, data)

    async def click_component(
        self,
        user: UserRef,
        message: MessageRef,
        custom_id: str,
        *,
        values: list[str] | None = None,
        component_type: int | None = None,
    ) -> InteractionHandle:
        msg = self._msg(message)
        data: dict[str, Any] = {
            "custom_id": custom_id,
            "component_type": component_type or (3 if values else 2),
        }
        if values is not None:
            data["values"] = values
        return self._start(COMPONENT, user, msg.channel_id, data, msg)

    async def submit_modal(
        self, user: UserRef, channel: ChannelRef, custom_id: str, values: dict[str, str]
    ) -> InteractionHandle:
        rows = [
            {"type": 1, "components": [{"type": 4, "custom_id": k, "value": v}]}
            for k, v in values.items()
        ]
        return self._start(
            MODAL_SUBMIT, user, channel, {"custom_id": custom_id, "components": rows}
        )

    def _command_data(
        self,
        user: UserRef,
        channel: ChannelRef,
        command: str,
        options: dict[str, Any],
        attachments: dict[str, FileSpec],
        focused: str | None = None,
    ) -> dict[str, Any]:
        guild, ch = self.world.channel(_cid(channel))
        path = command.strip().lstrip("/").split()
        cmd = self.find_command(guild, path[0])
        defs: list[dict[str, Any]] = cmd.get("options") or []
        wrappers: list[dict[str, Any]] = []
        for part in path[1:]:
            sub = next((o for o in defs if o["name"] == part and o["type"] in (1, 2)), None)
            if sub is None:
                raise LookupError(f"{command!r}: no subcommand {part!r}")
            wrappers.append({"type": sub["type"], "name": part})
            defs = sub.get("options") or []
        if defs and defs[0]["type"] in (1, 2):
            raise LookupError(f"{command!r} needs a subcommand")
        resolved: dict[str, dict[str, Any]] = {}
        given = {**options, **attachments}
        leaf: list[dict[str, Any]] = []
        for name, value in given.items():
            odef = next((o for o in defs if o["name"] == name), None)
            if odef is None:
                raise LookupError(f"{command!r} has no option {name!r}")
            leaf.append(self._option(guild, ch, odef, value, resolved, name == focused))
        for odef in defs:
            if odef.get("required") and odef["name"] not in given and focused is None:
                raise ValueError(f"{command!r}: required option {odef['name']!r} missing")
        opts = leaf
        for w in reversed(wrappers):
            opts = [{**w, "options": opts}]
        data: dict[str, Any] = {"id": cmd["id"], "name": cmd["name"], "type": 1, "options": opts}
        if resolved:
            data["resolved"] = resolved
        if cmd.get("guild_id"):
            data["guild_id"] = cmd["guild_id"]
        return data

    def _option(
        self,
        guild: Guild,
        channel: Channel,
        odef: dict[str, Any],
        value: Any,
        resolved: dict[str, dict[str, Any]],
        focused: bool,
    ) -> dict[str, Any]:
        otype = int(odef["type"])
        out: dict[str, Any] = {"name": odef["name"], "type": otype}
        if focused:
            return {**out, "value": str(value), "focused": True}
        if otype == 11:
            name, data = value[0], value[1]
            ctype = value[2] if len(value) > 2 else None
            att = self.world.make_attachments(channel.id, [(name, data, ctype)], 1 << 40)[0]
            att.ephemeral = True
            resolved.setdefault("attachments", {})[str(att.id)] = att.payload()
            value = str(att.id)
        elif otype in (6, 9) and not isinstance(value, Role):
            uid = _uid(value)
            resolved.setdefault("users", {})[str(uid)] = self.world.users[uid].payload()
            if uid in guild.members:
                member = self.world.member_payload(guild, uid, channel)
                member.pop("user")
                resolved.setdefault("members", {})[str(uid)] = member
            value = str(uid)
        elif otype in (8, 9):
            role = value if isinstance(value, Role) else guild.roles[int(value)]
            resolved.setdefault("roles", {})[str(role.id)] = role.payload()
            value = str(role.id)
        elif otype == 7:
            target = self.world.channel(_cid(value))[1]
            resolved.setdefault("channels", {})[str(target.id)] = {
                **target.payload(),
                "permissions": str(P.ALL),
            }
            value = str(target.id)
        elif otype == 4:
            value = int(value)
        elif otype == 10:
            value = float(value)
        elif otype == 5:
            value = bool(value)
        else:
            value = str(value)
        return {**out, "value": value}

    # --- waiting and reading -------------------------------------------------------------
    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("condition not met in time")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.25))

    async def wait_for_message(
        self,
        channel: ChannelRef,
        match: str | re.Pattern[str] | Callable[[Message], bool] | None = None,
        timeout: float = 5.0,
        *,
        after: MessageRef | None = None,
    ) -> Message:
        """First message (existing or new, edits included) in a channel/thread that matches.

        ``match`` is a regex searched in the content (and embed titles/descriptions), or a
        predicate; ``after`` skips messages up to and including that one."""
        cid = _cid(channel)
        floor = after.id if isinstance(after, Message) else int(after or 0)
        if match is None or isinstance(match, str | re.Pattern):
            rx = re.compile(match or "")

            def pred(m: Message) -> bool:
                text = " ".join(
                    [m.content]
                    + [
                        str(e.get("title", "")) + " " + str(e.get("description", ""))
                        for e in m.embeds
                    ]
                )
                return bool(rx.search(text))
        else:
            pred = match
        found: list[Message] = []

        def check() -> bool:
            for m in self.timeline(cid):
                if m.id > floor and pred(m):
                    found.append(m)
                    return True
            return False

        await self.wait_until(check, timeout)
        return found[0]

    def timeline(self, channel: ChannelRef) -> list[Message]:
        """Visible messages of a channel or thread, oldest first."""
        _g, ch = self.world.channel(_cid(channel))
        return [self.world.messages[i] for i in sorted(ch.message_ids)]

    def threads_of(self, channel: ChannelRef) -> list[Channel]:
        guild, ch = self.world.channel(_cid(channel))
        return sorted(
            (c for c in guild.channels.values() if c.parent_id == ch.id and c.is_thread),
            key=lambda c: c.id,
        )

    def message(self, message: MessageRef) -> Message:
        return self._msg(message)

    def attachment_bytes(self, message: MessageRef, index: int = 0) -> bytes:
        return self._msg(message).attachments[index].data

    def build_default_world(self) -> DefaultWorld:
        owner = self.create_user("owner")
        guild = self.create_guild("Atelier Test", owner=owner)
        channel = self.create_channel(guild, "training", topic="LoRA training jobs")
        manager = self.create_role(guild, "Manager", P.MANAGE_GUILD)
        alice, bob, carol = (self.create_user(n) for n in ("alice", "bob", "carol"))
        self.add_member(guild, alice)
        self.add_member(guild, bob)
        self.add_member(guild, carol, [manager])
        return DefaultWorld(guild, channel, self.world.bot, owner, alice, bob, carol, manager)
