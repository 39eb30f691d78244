"""Interactions a test starts (slash command, autocomplete, component, modal) and their replies."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import discord_emulator.errors as E

from .state import Channel, Guild, Message, User, snowflake
from .world import NewFile

if TYPE_CHECKING:
    from .server import DiscordEmulator

PING, APPLICATION_COMMAND, COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5
MESSAGE_REPLY, DEFERRED_REPLY, DEFERRED_UPDATE, UPDATE_MESSAGE = 4, 5, 6, 7
AUTOCOMPLETE_RESULT, MODAL = 8, 9
LOADING = 128


class InteractionHandle:
    """One interaction sent to the bot; records every response, edit and followup."""

    def __init__(
        self,
        emu: DiscordEmulator,
        itype: int,
        user: User,
        guild: Guild,
        channel: Channel,
        data: dict[str, Any],
        message: Message | None = None,
    ) -> None:
        self.emu = emu
        self.id = snowflake()
        self.token = "emu-" + secrets.token_urlsafe(32)
        self.type = itype
        self.user = user
        self.guild = guild
        self.channel = channel
        self.data = data
        self.message = message  # the component's message (type 3)
        self.created_at = emu.now()
        self.responses: list[dict[str, Any]] = []
        self.response_type: int | None = None
        self.original_id: int | None = None
        self.followup_ids: list[int] = []
        self.choices: list[dict[str, Any]] | None = None
        self.modal: dict[str, Any] | None = None
        self.rejected: list[E.DiscordError] = []

    # --- payload -------------------------------------------------------------------------
    def payload(self) -> dict[str, Any]:
        world, guild, channel = self.emu.world, self.guild, self.channel
        out: dict[str, Any] = {
            "id": str(self.id),
            "application_id": str(world.application_id),
            "type": self.type,
            "data": self.data,
            "guild_id": str(guild.id),
            "guild": {"id": str(guild.id), "locale": "en-US", "features": []},
            "channel_id": str(channel.id),
            "channel": {
                **channel.payload(),
                "permissions": str(guild.permissions_in(self.user.id, channel)),
            },
            "member": world.member_payload(guild, self.user.id, channel),
            "token": self.token,
            "version": 1,
            "app_permissions": str(guild.permissions_in(world.bot.id, channel)),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(guild.id)},
            "context": 0,
            "attachment_size_limit": guild.attachment_size_limit,
        }
        if self.message is not None:
            out["message"] = world.rest_message(self.message)
        return out

    # --- what the bot does ---------------------------------------------------------------
    def _check_token(self) -> None:
        if self.emu.now() - self.created_at > self.emu.token_lifetime:
            raise E.DiscordError(401, E.INVALID_WEBHOOK_TOKEN, "Invalid Webhook Token")

    def respond(self, body: dict[str, Any], files: list[NewFile]) -> dict[str, Any]:
        """POST /interactions/{id}/{token}/callback."""
        try:
            if self.emu.now() - self.created_at > self.emu.interaction_deadline:
                raise E.not_found(E.UNKNOWN_INTERACTION, "interaction")
            if self.response_type is not None:
                raise E.DiscordError(
                    400, E.ALREADY_ACKNOWLEDGED, "Interaction has already been acknowledged."
                )
            return self._respond(body, files)
        except E.DiscordError as exc:
            self.rejected.append(exc)
            self.notify()
            raise

    def _respond(self, body: dict[str, Any], files: list[NewFile]) -> dict[str, Any]:
        world = self.emu.world
        rtype = int(body.get("type", 0))
        data = body.get("data") or {}
        msg: Message | None = None
        if rtype == MESSAGE_REPLY:
            msg = self._new_message(data, files)
        elif rtype == DEFERRED_REPLY:
            flags = LOADING | (int(data.get("flags") or 0) & 64)
            msg = self._new_message({"content": "", "flags": flags}, [])
        elif rtype == UPDATE_MESSAGE:
            if self.message is None:
                raise E.DiscordError(400, 40004, "Interaction has no message to update")
            msg = world.edit_message(self.message, data, files)
        elif rtype == AUTOCOMPLETE_RESULT:
            choices = data.get("choices") or []
            if len(choices) > 25:
                raise E.form_error(
                    "data.choices", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
                )
            self.choices = choices
        elif rtype == MODAL:
            self.modal = data
        elif rtype != DEFERRED_UPDATE:
            raise E.form_error("type", "BASE_TYPE_CHOICES", "Value must be one of {4..12}.")
        self.response_type = rtype
        self.responses.append(body)
        if msg is not None and rtype in (MESSAGE_REPLY, DEFERRED_REPLY):
            self.original_id = msg.id
        self.notify()
        out: dict[str, Any] = {
            "interaction": {
                "id": str(self.id),
                "type": self.type,
                "response_message_loading": rtype == DEFERRED_REPLY,
                "response_message_ephemeral": bool(msg and msg.ephemeral),
            }
        }
        if msg is not None:
            out["interaction"]["response_message_id"] = str(msg.id)
            out["resource"] = {"type": rtype, "message": world.rest_message(msg)}
        elif rtype in (AUTOCOMPLETE_RESULT, MODAL, DEFERRED_UPDATE):
            out["resource"] = {"type": rtype}
        return out

    def _new_message(self, data: dict[str, Any], files: list[NewFile]) -> Message:
        msg = self.emu.world.create_message(
            self.emu.world.bot,
            self.channel.id,
            data,
            files,
            check_perms=False,
            webhook_id=self.emu.world.application_id,
            msg_type=20,
            dispatch=False,
        )
        msg.interaction_id = self.id
        if not msg.ephemeral:
            self.emu.world.dispatch("MESSAGE_CREATE", self.emu.world.message_event(msg))
        return msg

    def followup(
        self, body: dict[str, Any], files: list[NewFile], thread_id: int | None = None
    ) -> Message:
        """POST /webhooks/{app}/{token}: the first one after a defer fills the "thinking" one."""
        self._check_token()
        if self.response_type is None:
            raise E.not_found(E.UNKNOWN_WEBHOOK, "Webhook")
        original = self.original
        if original is not None and original.flags & LOADING and thread_id is None:
            body = {**body, "flags": (int(body.get("flags") or 0) & ~64)}
            msg = self.emu.world.edit_message(original, body, files)
        else:
            channel = self.channel
            if thread_id is not None:
                channel = self.emu.world.channel(thread_id)[1]
            msg = self.emu.world.create_message(
                self.emu.world.bot,
                channel.id,
                body,
                files,
                check_perms=False,
                webhook_id=self.emu.world.application_id,
                msg_type=20,
                dispatch=False,
            )
            msg.interaction_id = self.id
            if not msg.ephemeral:
                self.emu.world.dispatch("MESSAGE_CREATE", self.emu.world.message_event(msg))
        self.followup_ids.append(msg.id)
        self.notify()
        return msg

    def notify(self) -> None:
        self.emu.notify()

    # --- what the test reads -------------------------------------------------------------
    @property
    def original(self) -> Message | None:
        return self.emu.world.messages.get(self.original_id) if self.original_id else None

    @property
    def followups(self) -> list[Message]:
        return [self.emu.world.messages[i] for i in self.followup_ids]

    @property
    def messages(self) -> list[Message]:
        ids = ([self.original_id] if self.original_id else []) + self.followup_ids
        seen: list[int] = []
        for i in ids:
            if i not in seen:
                seen.append(i)
        return [self.emu.world.messages[i] for i in seen]

    async def wait(
        self, predicate: Callable[[InteractionHandle], bool], timeout: float = 5.0
    ) -> None:
        await self.emu.wait_until(lambda: predicate(self), timeout)

    async def wait_response(self, timeout: float = 5.0) -> dict[str, Any]:
        """The first callback body (``{"type": 5, ...}``); raises if the bot was too late."""
        await self.wait(lambda h: h.response_type is not None or bool(h.rejected), timeout)
        if self.response_type is None:
            raise self.rejected[0]
        return self.responses[0]

    async def wait_followup(self, n: int = 1, timeout: float = 10.0) -> Message:
        await self.wait(lambda h: len(h.followup_ids) >= n, timeout)
        return self.followups[n - 1]

    async def wait_choices(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        await self.wait(lambda h: h.choices is not None, timeout)
        assert self.choices is not None
        return self.choices

    async def wait_original(self, timeout: float = 10.0) -> Message:
        """The original response once it is no longer "thinking"."""
        await self.wait(
            lambda h: h.original is not None and not h.original.flags & LOADING, timeout
        )
        assert self.original is not None
        return self.original
