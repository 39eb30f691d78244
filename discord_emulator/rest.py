"""REST API under /api/v10 (aiohttp routes), plus the attachment CDN.

Length: one handler per Discord route the bot uses, next to its route table, so a reader
checks one route against Discord's docs in one place.
"""

from __future__ import annotations

import json
import math
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from aiohttp import web

import discord_emulator.errors as E

from .state import P, emoji_key
from .world import NewFile

if TYPE_CHECKING:
    from .server import DiscordEmulator

API = "/api/v10"
JSON = "application/json"


def jresp(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """JSON with Content-Type exactly ``application/json`` (no charset: discord.py needs it)."""
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": JSON, **(headers or {})},
    )


def no_content() -> web.Response:
    return web.Response(status=204)


async def read_body(request: web.Request) -> tuple[dict[str, Any], list[NewFile]]:
    """JSON body, or multipart with ``payload_json`` and ``files[n]``."""
    if request.content_type.startswith("multipart/"):
        payload: dict[str, Any] = {}
        files: list[tuple[int, NewFile]] = []
        reader = await request.multipart()
        async for part in reader:
            name = part.name or ""  # type: ignore[union-attr]
            data = await part.read()  # type: ignore[union-attr]
            if name == "payload_json":
                payload = json.loads(data or b"{}")
            elif name.startswith("files[") or part.filename:  # type: ignore[union-attr]
                idx = int(name[6:-1]) if name.startswith("files[") else len(files)
                ctype = part.headers.get("Content-Type")  # type: ignore[union-attr]
                files.append((idx, (part.filename or f"file{idx}", bytes(data), ctype)))  # type: ignore[union-attr]
        return payload, [f for _, f in sorted(files, key=lambda x: x[0])]
    raw = await request.read()
    return (json.loads(raw) if raw else {}), []


def _int(request: web.Request, key: str) -> int:
    try:
        return int(request.match_info[key])
    except ValueError:
        raise E.DiscordError(
            400,
            E.INVALID_FORM_BODY,
            "Invalid Form Body",
            {
                key: {
                    "_errors": [
                        {"code": "NUMBER_TYPE_COERCE", "message": "Value is not snowflake."}
                    ]
                }
            },
        ) from None


def _q(request: web.Request, key: str) -> int | None:
    v = request.query.get(key)
    return int(v) if v not in (None, "") else None


class Rest:
    def __init__(self, emu: DiscordEmulator) -> None:
        self.emu = emu
        self.world = emu.world

    # --- plumbing ------------------------------------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        if path.startswith(API):
            path = path[len(API) :]
        self.emu.calls.append((request.method, path))
        try:
            fault = self.emu.take_fault(request.method, path)
            if fault is not None:
                resp = await fault.apply()
                if resp is not None:
                    return resp
            if (
                request.path.startswith(API)
                and not self._public(path)
                and request.headers.get("Authorization") != f"Bot {self.emu.token}"
            ):
                return jresp({"message": "401: Unauthorized", "code": 0}, 401)
            return await handler(request)
        except E.DiscordError as exc:
            return jresp(exc.body(), exc.status)
        except web.HTTPException as exc:
            if exc.status in (404, 405):
                self.emu.unknown_calls.append((request.method, path))
                return jresp({"message": "404: Not Found", "code": 0}, 404)
            raise

    @staticmethod
    def _public(path: str) -> bool:
        return path.startswith(("/webhooks/", "/interactions/", "/gateway"))

    def routes(self) -> list[web.RouteDef]:
        a, r = API, web
        return [
            r.get(f"{a}/gateway", self.gateway),
            r.get(f"{a}/gateway/bot", self.gateway),
            r.get(f"{a}/users/@me", self.me),
            r.get(f"{a}/users/{{uid}}", self.get_user),
            r.get(f"{a}/oauth2/applications/@me", self.application),
            r.get(f"{a}/applications/@me", self.application),
            r.get(f"{a}/applications/{{app}}/commands", self.get_commands),
            r.put(f"{a}/applications/{{app}}/commands", self.put_commands),
            r.post(f"{a}/applications/{{app}}/commands", self.post_command),
            r.get(f"{a}/applications/{{app}}/guilds/{{gid}}/commands", self.get_commands),
            r.put(f"{a}/applications/{{app}}/guilds/{{gid}}/commands", self.put_commands),
            r.post(f"{a}/applications/{{app}}/guilds/{{gid}}/commands", self.post_command),
            r.get(f"{a}/applications/{{app}}/guilds/{{gid}}/commands/permissions", self.empty_list),
            r.post(f"{a}/interactions/{{iid}}/{{token}}/callback", self.callback),
            r.post(f"{a}/webhooks/{{app}}/{{token}}", self.followup),
            r.get(f"{a}/webhooks/{{app}}/{{token}}/messages/{{mid}}", self.webhook_get),
            r.patch(f"{a}/webhooks/{{app}}/{{token}}/messages/{{mid}}", self.webhook_edit),
            r.delete(f"{a}/webhooks/{{app}}/{{token}}/messages/{{mid}}", self.webhook_delete),
            r.get(f"{a}/channels/{{cid}}", self.get_channel),
            r.patch(f"{a}/channels/{{cid}}", self.patch_channel),
            r.post(f"{a}/channels/{{cid}}/typing", self.typing),
            r.get(f"{a}/channels/{{cid}}/messages", self.history),
            r.post(f"{a}/channels/{{cid}}/messages", self.post_message),
            r.get(f"{a}/channels/{{cid}}/messages/{{mid}}", self.get_message),
            r.patch(f"{a}/channels/{{cid}}/messages/{{mid}}", self.edit_message),
            r.delete(f"{a}/channels/{{cid}}/messages/{{mid}}", self.delete_message),
            r.post(f"{a}/channels/{{cid}}/messages/{{mid}}/threads", self.thread_from_message),
            r.post(f"{a}/channels/{{cid}}/threads", self.thread),
            r.put(f"{a}/channels/{{cid}}/thread-members/@me", self.typing),
            r.put(f"{a}/channels/{{cid}}/messages/{{mid}}/reactions/{{emoji}}/@me", self.react),
            r.delete(
                f"{a}/channels/{{cid}}/messages/{{mid}}/reactions/{{emoji}}/@me", self.unreact
            ),
            r.delete(
                f"{a}/channels/{{cid}}/messages/{{mid}}/reactions/{{emoji}}/{{uid}}", self.unreact
            ),
            r.get(f"{a}/channels/{{cid}}/messages/{{mid}}/reactions/{{emoji}}", self.reactors),
            r.delete(f"{a}/channels/{{cid}}/messages/{{mid}}/reactions", self.clear_reactions),
            r.get(f"{a}/guilds/{{gid}}", self.get_guild),
            r.get(f"{a}/guilds/{{gid}}/channels", self.guild_channels),
            r.get(f"{a}/guilds/{{gid}}/roles", self.guild_roles),
            r.get(f"{a}/guilds/{{gid}}/members/{{uid}}", self.get_member),
            r.get(f"{a}/guilds/{{gid}}/threads/active", self.active_threads),
            r.get("/attachments/{cid}/{aid}/{filename}", self.cdn),
        ]

    # --- identity ------------------------------------------------------------------------
    async def gateway(self, request: web.Request) -> web.Response:
        return jresp(
            {
                "url": self.emu.gateway_url,
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 0,
                    "max_concurrency": 1,
                },
            }
        )

    async def me(self, request: web.Request) -> web.Response:
        return jresp({**self.world.bot.payload(), "verified": True, "mfa_enabled": False})

    async def get_user(self, request: web.Request) -> web.Response:
        user = self.world.users.get(_int(request, "uid"))
        if user is None:
            raise E.not_found(10013, "User")
        return jresp(user.payload())

    async def application(self, request: web.Request) -> web.Response:
        bot = self.world.bot
        return jresp(
            {
                "id": str(self.world.application_id),
                "name": bot.username,
                "icon": None,
                "description": "",
                "rpc_origins": [],
                "bot_public": True,
                "bot_require_code_grant": False,
                "bot": bot.payload(),
                "terms_of_service_url": None,
                "privacy_policy_url": None,
                "owner": self.emu.owner.payload(),
                "summary": "",
                "verify_key": "0" * 64,
                "team": None,
                "guild_id": None,
                "primary_sku_id": None,
                "slug": None,
                "cover_image": None,
                "flags": 0,
                "approximate_guild_count": 1,
                "tags": [],
                "install_params": None,
                "custom_install_url": None,
                "integration_types_config": {},
                "redirect_uris": [],
                "interactions_endpoint_url": None,
            }
        )

    async def empty_list(self, request: web.Request) -> web.Response:
        return jresp([])

    # --- commands ------------------------------------------------------------------------
    def _scope(self, request: web.Request) -> int | None:
        if _int(request, "app") != self.world.application_id:
            raise E.DiscordError(403, 50001, "Missing Access")
        gid = request.match_info.get("gid")
        if gid is not None:
            self.world.guild(int(gid))
        return int(gid) if gid is not None else None

    async def get_commands(self, request: web.Request) -> web.Response:
        return jresp(list(self.emu.commands.get(self._scope(request), {}).values()))

    async def put_commands(self, request: web.Request) -> web.Response:
        scope = self._scope(request)
        body, _ = await read_body(request)
        return jresp(self.emu.overwrite_commands(scope, body))

    async def post_command(self, request: web.Request) -> web.Response:
        scope = self._scope(request)
        body, _ = await read_body(request)
        existing = list(self.emu.commands.get(scope, {}).values())
        merged = [c for c in existing if c["name"] != body.get("name")] + [body]
        out = self.emu.overwrite_commands(scope, merged, count_sync=False)
        return jresp(next(c for c in out if c["name"] == body.get("name")), 201)

    # --- interactions and webhooks -------------------------------------------------------
    async def callback(self, request: web.Request) -> web.Response:
        body, files = await read_body(request)
        handle = self.emu.interaction_for(request.match_info["token"], _int(request, "iid"))
        result = handle.respond(body, files)
        if request.query.get("with_response") in ("1", "true", "True"):
            return jresp(result)
        return no_content()

    async def followup(self, request: web.Request) -> web.Response:
        body, files = await read_body(request)
        handle = self.emu.webhook_handle(_int(request, "app"), request.match_info["token"])
        msg = handle.followup(body, files, _q(request, "thread_id"))
        if request.query.get("wait") in ("1", "true", "True"):
            return jresp(self.world.rest_message(msg))
        return no_content()

    def _webhook_msg(self, request: web.Request) -> Any:
        handle = self.emu.webhook_handle(_int(request, "app"), request.match_info["token"])
        mid = request.match_info["mid"]
        msg_id = handle.original_id if mid == "@original" else int(mid)
        msg = self.world.messages.get(msg_id or 0)
        if msg is None or msg.deleted or msg.interaction_id != handle.id:
            raise E.not_found(E.UNKNOWN_MESSAGE, "Message")
        return handle, msg

    async def webhook_get(self, request: web.Request) -> web.Response:
        _h, msg = self._webhook_msg(request)
        return jresp(self.world.rest_message(msg))

    async def webhook_edit(self, request: web.Request) -> web.Response:
        handle, msg = self._webhook_msg(request)
        body, files = await read_body(request)
        self.world.edit_message(msg, body, files)
        handle.notify()
        return jresp(self.world.rest_message(msg))

    async def webhook_delete(self, request: web.Request) -> web.Response:
        _h, msg = self._webhook_msg(request)
        self.world.delete_message(msg)
        return no_content()

    # --- channels and messages -----------------------------------------------------------
    @property
    def bot_id(self) -> int:
        return self.world.bot.id

    async def get_channel(self, request: web.Request) -> web.Response:
        cid = _int(request, "cid")
        self.world.require(self.bot_id, cid)
        return jresp(self.world.channel(cid)[1].payload())

    async def patch_channel(self, request: web.Request) -> web.Response:
        cid = _int(request, "cid")
        _guild, channel = self.world.channel(cid)
        body, _ = await read_body(request)
        if not (channel.is_thread and channel.owner_id == self.bot_id):
            perm = P.MANAGE_THREADS if channel.is_thread else P.MANAGE_CHANNELS
            self.world.require(self.bot_id, cid, perm)
        return jresp(self.world.update_channel(channel, body).payload())

    async def typing(self, request: web.Request) -> web.Response:
        self.world.channel(_int(request, "cid"))
        return no_content()

    async def history(self, request: web.Request) -> web.Response:
        cid = _int(request, "cid")
        self.world.require(self.bot_id, cid, P.READ_MESSAGE_HISTORY)
        msgs = self.world.history(
            cid,
            _q(request, "before"),
            _q(request, "after"),
            _q(request, "around"),
            _q(request, "limit") or 50,
        )
        return jresp([self.world.rest_message(m) for m in msgs])

    async def post_message(self, request: web.Request) -> web.Response:
        cid = _int(request, "cid")
        body, files = await read_body(request)
        msg = self.world.create_message(self.world.bot, cid, body, files)
        return jresp(self.world.rest_message(msg))

    async def get_message(self, request: web.Request) -> web.Response:
        cid = _int(request, "cid")
        self.world.require(self.bot_id, cid, P.READ_MESSAGE_HISTORY)
        return jresp(self.world.rest_message(self.world.message(cid, _int(request, "mid"))))

    async def edit_message(self, request: web.Request) -> web.Response:
        cid = _int(request, "cid")
        msg = self.world.message(cid, _int(request, "mid"))
        if msg.author.id != self.bot_id or msg.webhook_id:
            raise E.DiscordError(403, 50005, "Cannot edit a message authored by another user")
        body, files = await read_body(request)
        if files:
            self.world.require(self.bot_id, cid, P.ATTACH_FILES)
        return jresp(self.world.rest_message(self.world.edit_message(msg, body, files)))

    async def delete_message(self, request: web.Request) -> web.Response:
        cid = _int(request, "cid")
        msg = self.world.message(cid, _int(request, "mid"))
        if msg.author.id != self.bot_id:
            self.world.require(self.bot_id, cid, P.MANAGE_MESSAGES)
        self.world.delete_message(msg)
        return no_content()

    async def thread_from_message(self, request: web.Request) -> web.Response:
        body, _ = await read_body(request)
        thread = self.world.create_thread(
            self.bot_id,
            _int(request, "cid"),
            body.get("name", ""),
            message_id=_int(request, "mid"),
            auto_archive_duration=int(body.get("auto_archive_duration") or 1440),
        )
        return jresp(thread.payload(), 201)

    async def thread(self, request: web.Request) -> web.Response:
        body, _ = await read_body(request)
        thread = self.world.create_thread(
            self.bot_id,
            _int(request, "cid"),
            body.get("name", ""),
            thread_type=int(body.get("type") or 12),
            auto_archive_duration=int(body.get("auto_archive_duration") or 1440),
        )
        return jresp(thread.payload(), 201)

    # --- reactions -----------------------------------------------------------------------
    def _reaction_target(self, request: web.Request) -> tuple[Any, str]:
        cid = _int(request, "cid")
        msg = self.world.message(cid, _int(request, "mid"))
        raw = request.match_info["emoji"]
        if "%" in raw:
            raw = unquote(raw)
        return msg, emoji_key(raw)

    async def react(self, request: web.Request) -> web.Response:
        msg, key = self._reaction_target(request)
        self.world.add_reaction(self.bot_id, msg, key)
        return no_content()

    async def unreact(self, request: web.Request) -> web.Response:
        msg, key = self._reaction_target(request)
        uid = request.match_info.get("uid")
        user_id = int(uid) if uid else self.bot_id
        if user_id != self.bot_id:
            self.world.require(self.bot_id, msg.channel_id, P.MANAGE_MESSAGES)
        self.world.remove_reaction(user_id, msg, key)
        return no_content()

    async def reactors(self, request: web.Request) -> web.Response:
        msg, key = self._reaction_target(request)
        after = _q(request, "after") or 0
        limit = max(1, min(100, _q(request, "limit") or 25))
        ids = sorted(u for u in msg.reactions.get(key, []) if u > after)[:limit]
        return jresp([self.world.users[u].payload() for u in ids])

    async def clear_reactions(self, request: web.Request) -> web.Response:
        cid = _int(request, "cid")
        self.world.require(self.bot_id, cid, P.MANAGE_MESSAGES)
        msg = self.world.message(cid, _int(request, "mid"))
        for key, users in list(msg.reactions.items()):
            for uid in list(users):
                self.world.remove_reaction(uid, msg, key)
        return no_content()

    # --- guilds --------------------------------------------------------------------------
    async def get_guild(self, request: web.Request) -> web.Response:
        guild = self.world.guild(_int(request, "gid"))
        out = guild.payload()
        out.update(
            approximate_member_count=len(guild.members),
            approximate_presence_count=len(guild.members),
        )
        return jresp(out)

    async def guild_channels(self, request: web.Request) -> web.Response:
        guild = self.world.guild(_int(request, "gid"))
        return jresp([c.payload() for c in guild.channels.values() if not c.is_thread])

    async def guild_roles(self, request: web.Request) -> web.Response:
        guild = self.world.guild(_int(request, "gid"))
        return jresp([r.payload() for r in guild.roles.values()])

    async def get_member(self, request: web.Request) -> web.Response:
        guild = self.world.guild(_int(request, "gid"))
        member = guild.members.get(_int(request, "uid"))
        if member is None:
            raise E.not_found(E.UNKNOWN_MEMBER, "Member")
        return jresp(member.payload())

    async def active_threads(self, request: web.Request) -> web.Response:
        guild = self.world.guild(_int(request, "gid"))
        threads = [c.payload() for c in guild.channels.values() if c.is_thread and not c.archived]
        return jresp({"threads": threads, "members": []})

    async def cdn(self, request: web.Request) -> web.StreamResponse:
        aid = _int(request, "aid")
        att = self.world.cdn.get(aid)
        if att is None:
            return web.Response(status=404, text="Not Found")
        self.world.cdn_fetches[aid] += 1
        return web.Response(
            body=att.data, content_type=att.content_type or "application/octet-stream"
        )


def rate_limited(retry_after: float, is_global: bool = False) -> web.Response:
    """A 429 the way Discord sends it (Via header included: discord.py checks for it)."""
    now = time.time()
    return jresp(
        {
            "message": "You are being rate limited.",
            "retry_after": retry_after,
            "global": is_global,
            "code": 0,
        },
        429,
        {
            "Via": "1.1 google",
            "Retry-After": str(math.ceil(retry_after)),
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{now + retry_after:.3f}",
            "X-RateLimit-Reset-After": f"{retry_after:.3f}",
            "X-RateLimit-Bucket": "emulator-bucket",
            "X-RateLimit-Scope": "global" if is_global else "user",
            **({"X-RateLimit-Global": "true"} if is_global else {}),
        },
    )
