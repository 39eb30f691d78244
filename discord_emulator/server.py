"""The emulator: one aiohttp server on 127.0.0.1 with REST, gateway and attachment CDN."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

import discord_emulator.errors as E

from .gateway import RECONNECT, Gateway
from .interactions import InteractionHandle
from .rest import Rest, jresp, rate_limited
from .scripting import DefaultWorld, ScriptingMixin
from .state import snowflake
from .world import World

DAILY_COMMAND_CREATES = 200


@dataclass
class Fault:
    route: re.Pattern[str]
    remaining: int
    kind: str  # "429", "status", "delay"
    status: int = 500
    retry_after: float = 0.05
    delay: float = 0.0
    is_global: bool = False

    async def apply(self) -> web.Response | None:
        if self.kind == "delay":
            await asyncio.sleep(self.delay)
            return None
        if self.kind == "429":
            return rate_limited(self.retry_after, self.is_global)
        text = {
            500: "Internal Server Error",
            502: "Bad Gateway",
            503: "Service Unavailable",
            504: "Gateway Timeout",
        }.get(self.status, "Error")
        return jresp({"message": f"{self.status}: {text}", "code": 0}, self.status)


class DiscordEmulator(ScriptingMixin):
    """Local Discord (REST /api/v10 + gateway + CDN) for the real discord.py client.

    ``async with DiscordEmulator() as emu:`` starts it and points discord.py at it
    (``Route.BASE`` and ``DiscordWebSocket.DEFAULT_GATEWAY``), restoring both on exit.
    """

    def __init__(
        self,
        token: str = "emulator-bot-token",
        *,
        default_world: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.token = token
        self.host = host
        self.port = port
        self.interaction_deadline = 3.0
        self.token_lifetime = 15 * 60.0
        self._time_offset = 0.0
        self._changed = asyncio.Event()
        self.calls: list[tuple[str, str]] = []
        self.unknown_calls: list[tuple[str, str]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.faults: list[Fault] = []
        self.commands: dict[int | None, dict[str, dict[str, Any]]] = {}
        self.command_syncs: dict[int | None, int] = {}
        self.command_creates: dict[int | None, list[float]] = {}
        self.interactions: dict[int, InteractionHandle] = {}
        self.gateway = Gateway(self)
        self.world = World(self._dispatch, lambda: self.base_url, self.now)
        self.owner = self.world.add_user("app-owner")
        self.rest = Rest(self)
        self._runner: web.AppRunner | None = None
        self._patches: list[tuple[Any, str, Any]] = []
        self.default: DefaultWorld | None = self.build_default_world() if default_world else None

    # --- lifecycle -----------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.host}:{self.port}/"

    async def start(self) -> None:
        app = web.Application(middlewares=[self.rest.middleware], client_max_size=256 * 2**20)
        app.add_routes(self.rest.routes())
        app.router.add_get("/", self.gateway.handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[union-attr]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        for att in self.world.cdn.values():  # made before the port was known
            att.url = re.sub(r"^http://[^/]+", self.base_url, att.url)

    async def stop(self) -> None:
        await self.gateway.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @contextmanager
    def patch_discord(self) -> Iterator[DiscordEmulator]:
        """Point discord.py (process-wide) at this emulator; restores the old values."""
        import discord.gateway
        import discord.http
        import yarl

        route, ws = discord.http.Route, discord.gateway.DiscordWebSocket
        old = (route.BASE, ws.DEFAULT_GATEWAY)
        route.BASE = self.api_base
        ws.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        try:
            yield self
        finally:
            route.BASE, ws.DEFAULT_GATEWAY = old

    async def __aenter__(self) -> DiscordEmulator:
        await self.start()
        self._patch_cm = self.patch_discord()
        self._patch_cm.__enter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            self._patch_cm.__exit__(None, None, None)
        finally:
            await self.stop()

    # --- time, events --------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() + self._time_offset

    def advance_time(self, seconds: float) -> None:
        """Move the emulator's clock (interaction deadlines, token life, daily limits)."""
        self._time_offset += seconds

    def _dispatch(self, event: str, data: dict[str, Any]) -> None:
        self.events.append((event, data))
        self.gateway.dispatch(event, data)
        self.notify()

    async def wait_for_event(
        self, event: str, timeout: float = 5.0, start: int = 0
    ) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def check() -> bool:
            found[:] = [d for e, d in self.events[start:] if e == event]
            return bool(found)

        await self.wait_until(check, timeout)
        return found[0]

    async def wait_for_identify(self, count: int = 1, timeout: float = 5.0) -> None:
        await self.wait_until(lambda: self.gateway.identifies >= count, timeout)

    # --- faults --------------------------------------------------------------------------
    def take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.remaining > 0 and fault.route.search(f"{method} {path}"):
                fault.remaining -= 1
                return fault
        return None

    def rate_limit(
        self, route: str, count: int = 1, retry_after: float = 0.05, is_global: bool = False
    ) -> Fault:
        """Next ``count`` requests whose ``"METHOD /path"`` matches the regex ``route`` get 429."""
        fault = Fault(re.compile(route), count, "429", retry_after=retry_after, is_global=is_global)
        self.faults.append(fault)
        return fault

    def server_error(self, route: str, count: int = 1, status: int = 500) -> Fault:
        fault = Fault(re.compile(route), count, "status", status=status)
        self.faults.append(fault)
        return fault

    def slow(self, route: str, delay: float, count: int = 1) -> Fault:
        fault = Fault(re.compile(route), count, "delay", delay=delay)
        self.faults.append(fault)
        return fault

    async def drop_gateway(self, code: int = 4000, hold: bool = False) -> None:
        """Close the bot's websocket; with ``hold`` new connections wait for
        :meth:`release_gateway` (events meanwhile are buffered and replayed on RESUME)."""
        await self.gateway.drop(code, hold)

    def release_gateway(self) -> None:
        self.gateway.release()

    async def send_reconnect(self) -> None:
        """Gateway op 7 RECONNECT: the client reconnects and RESUMEs."""
        await self.gateway.send_op(RECONNECT)

    async def invalidate_session(self, resumable: bool = False) -> None:
        """Gateway op 9. Not resumable: discord.py waits 5 s, then IDENTIFYs again."""
        await self.gateway.invalidate(resumable)

    # --- commands and interactions (used by REST) ----------------------------------------
    def overwrite_commands(
        self, scope: int | None, body: Any, count_sync: bool = True
    ) -> list[dict[str, Any]]:
        if not isinstance(body, list):
            raise E.form_error("_root", "LIST_TYPE_CONVERT", "Must be a list")
        if count_sync:
            self.command_syncs[scope] = self.command_syncs.get(scope, 0) + 1
        old = self.commands.get(scope, {})
        day_ago = self.now() - 86400
        creates = [t for t in self.command_creates.get(scope, []) if t > day_ago]
        new: dict[str, dict[str, Any]] = {}
        for i, cmd in enumerate(body):
            ctype = int(cmd.get("type") or 1)
            name = str(cmd.get("name") or "")
            if not 1 <= len(name) <= 32:
                raise E.form_error(f"{i}.name", "BASE_TYPE_BAD_LENGTH", "Must be 1-32 long.")
            if ctype == 1 and not 1 <= len(cmd.get("description") or "") <= 100:
                raise E.form_error(
                    f"{i}.description",
                    "BASE_TYPE_BAD_LENGTH",
                    "Must be between 1 and 100 in length.",
                )
            if len(cmd.get("options") or []) > 25:
                raise E.form_error(
                    f"{i}.options", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
                )
            key = f"{ctype}:{name}"
            prev = old.get(key)
            if prev is None:
                if len(creates) >= DAILY_COMMAND_CREATES:
                    raise E.DiscordError(
                        400,
                        E.MAX_COMMAND_CREATES,
                        "Max number of daily application command creates has been reached (200)",
                    )
                creates.append(self.now())
            new[key] = {
                "type": ctype,
                "options": [],
                "default_member_permissions": None,
                "dm_permission": True,
                "nsfw": False,
                "contexts": None,
                "integration_types": [0],
                "name_localizations": None,
                "description_localizations": None,
                **cmd,
                "id": prev["id"] if prev else str(snowflake()),
                "application_id": str(self.world.application_id),
                "version": str(snowflake()),
            }
            if scope is not None:
                new[key]["guild_id"] = str(scope)
        self.command_creates[scope] = creates
        self.commands[scope] = new
        return list(new.values())

    def interaction_for(self, token: str, interaction_id: int) -> InteractionHandle:
        handle = self.interactions.get(interaction_id)
        if handle is None or handle.token != token:
            raise E.not_found(E.UNKNOWN_INTERACTION, "interaction")
        return handle

    def webhook_handle(self, app_id: int, token: str) -> InteractionHandle:
        if app_id == self.world.application_id:
            for handle in self.interactions.values():
                if handle.token == token:
                    handle._check_token()
                    return handle
        raise E.not_found(E.UNKNOWN_WEBHOOK, "Webhook")

    # --- transcript ----------------------------------------------------------------------
    def render_transcript(self, channel: Any, path: str | Path) -> Path:
        from .transcript import render

        out = Path(path)
        out.write_text(
            render(
                self, self.world.channel(channel.id if hasattr(channel, "id") else int(channel))[1]
            ),
            encoding="utf-8",
        )
        return out
