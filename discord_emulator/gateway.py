"""Gateway websocket: HELLO, heartbeats, IDENTIFY/READY, RESUME with replay, faults."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

if TYPE_CHECKING:
    from .server import DiscordEmulator

log = logging.getLogger(__name__)

DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE, RESUME, RECONNECT = 0, 1, 2, 3, 6, 7
REQUEST_MEMBERS, INVALID_SESSION, HELLO, HEARTBEAT_ACK = 8, 9, 10, 11
MESSAGE_CONTENT = 1 << 15
EVENT_INTENTS = {
    "GUILD_MEMBER_ADD": 1 << 1,
    "GUILD_MEMBER_UPDATE": 1 << 1,
    "GUILD_MEMBER_REMOVE": 1 << 1,
    "MESSAGE_CREATE": 1 << 9,
    "MESSAGE_UPDATE": 1 << 9,
    "MESSAGE_DELETE": 1 << 9,
    "MESSAGE_REACTION_ADD": 1 << 10,
    "MESSAGE_REACTION_REMOVE": 1 << 10,
    "MESSAGE_REACTION_REMOVE_ALL": 1 << 10,
    "MESSAGE_REACTION_REMOVE_EMOJI": 1 << 10,
}


@dataclass
class Session:
    id: str
    intents: int
    seq: int = 0
    buffer: list[dict[str, Any]] = field(default_factory=list)
    ws: web.WebSocketResponse | None = None


class Gateway:
    def __init__(self, emu: DiscordEmulator) -> None:
        self.emu = emu
        self.sessions: dict[str, Session] = {}
        self.sockets: set[web.WebSocketResponse] = set()
        self.open = asyncio.Event()
        self.open.set()
        self.identifies = 0
        self.resumes = 0
        self.replayed = 0
        self.received: list[dict[str, Any]] = []
        self.heartbeat_interval_ms = 41250
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, ws: web.WebSocketResponse, frame: dict[str, Any]) -> None:
        """Send without awaiting; tasks run FIFO, so frames keep their order."""
        task = asyncio.get_running_loop().create_task(self._send(ws, frame))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- sending -------------------------------------------------------------------------
    def dispatch(self, event: str, data: dict[str, Any]) -> None:
        for session in self.sessions.values():
            need = EVENT_INTENTS.get(event, 0)
            if need and not session.intents & need:
                continue  # like Discord: no intent, no event
            session.seq += 1
            frame = {
                "op": DISPATCH,
                "t": event,
                "s": session.seq,
                "d": self._redact(session, event, data),
            }
            session.buffer.append(frame)
            del session.buffer[:-1000]
            if session.ws is not None and not session.ws.closed:
                self._spawn(session.ws, frame)

    def _redact(self, session: Session, event: str, data: dict[str, Any]) -> dict[str, Any]:
        """Without the Message Content intent, other users' messages arrive empty unless
        they mention the bot (Discord's rule)."""
        if event not in ("MESSAGE_CREATE", "MESSAGE_UPDATE") or session.intents & MESSAGE_CONTENT:
            return data
        bot_id = str(self.emu.world.bot.id)
        if (data.get("author") or {}).get("id") == bot_id or f"<@{bot_id}>" in data.get(
            "content", ""
        ):
            return data
        return {**data, "content": "", "embeds": [], "attachments": [], "components": []}

    async def _send(self, ws: web.WebSocketResponse, frame: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):  # closed: RESUME replays it
            await ws.send_str(json.dumps(frame))

    def _live(self) -> list[Session]:
        return [s for s in self.sessions.values() if s.ws is not None and not s.ws.closed]

    # --- faults --------------------------------------------------------------------------
    async def drop(self, code: int = 4000, hold: bool = False) -> None:
        """Close every connection (like a network drop). ``hold`` refuses to greet new
        connections until :meth:`release` so a test can queue events for replay."""
        if hold:
            self.open.clear()
        for session in self._live():
            ws, session.ws = session.ws, None
            assert ws is not None
            await ws.close(code=code)

    def release(self) -> None:
        self.open.set()

    async def send_op(self, op: int, d: Any = None) -> None:
        for session in self._live():
            assert session.ws is not None
            await session.ws.send_str(json.dumps({"op": op, "d": d, "s": None, "t": None}))

    async def invalidate(self, resumable: bool = False) -> None:
        if not resumable:
            for session in self._live():
                self.sessions.pop(session.id, None)
                assert session.ws is not None
                await session.ws.send_str(json.dumps({"op": INVALID_SESSION, "d": False}))
            return
        await self.send_op(INVALID_SESSION, True)

    async def close_all(self) -> None:
        self.open.set()
        for ws in list(self.sockets):
            await ws.close(code=1000)

    # --- handler -------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.sockets.add(ws)
        try:
            await self.open.wait()
            await ws.send_str(
                json.dumps(
                    {
                        "op": HELLO,
                        "d": {"heartbeat_interval": self.heartbeat_interval_ms},
                        "s": None,
                        "t": None,
                    }
                )
            )
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                await self._on_frame(ws, json.loads(msg.data))
        finally:
            self.sockets.discard(ws)
        return ws

    async def _on_frame(self, ws: web.WebSocketResponse, frame: dict[str, Any]) -> None:
        op, d = frame.get("op"), frame.get("d")
        self.received.append(frame)
        if op == HEARTBEAT:
            await ws.send_str(json.dumps({"op": HEARTBEAT_ACK, "d": None}))
        elif op == IDENTIFY:
            await self._identify(ws, d)
        elif op == RESUME:
            await self._resume(ws, d)
        elif op == REQUEST_MEMBERS:
            guild = self.emu.world.guilds.get(int(d["guild_id"]))
            if guild:
                self.dispatch(
                    "GUILD_MEMBERS_CHUNK",
                    {
                        "guild_id": str(guild.id),
                        "chunk_index": 0,
                        "chunk_count": 1,
                        "members": [m.payload() for m in guild.members.values()],
                        "not_found": [],
                        "nonce": d.get("nonce"),
                    },
                )

    async def _identify(self, ws: web.WebSocketResponse, d: dict[str, Any]) -> None:
        if d.get("token") != self.emu.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return
        self.identifies += 1
        session = Session(uuid.uuid4().hex, int(d.get("intents") or 0), ws=ws)
        for old in list(self.sessions.values()):  # one bot, one session at a time
            if old.ws is not None and not old.ws.closed:
                await old.ws.close(code=4000)
        self.sessions = {session.id: session}
        world = self.emu.world
        guilds = [g for g in world.guilds.values() if world.bot.id in g.members]
        self._send_one(
            session,
            "READY",
            {
                "v": 10,
                "user": {**world.bot.payload(), "verified": True, "mfa_enabled": False},
                "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
                "session_id": session.id,
                "session_type": "normal",
                "resume_gateway_url": self.emu.gateway_url,
                "shard": [0, 1],
                "application": {"id": str(world.application_id), "flags": 0},
                "private_channels": [],
                "relationships": [],
                "presences": [],
                "guild_join_requests": [],
                "geo_ordered_rtc_regions": [],
                "auth": {},
                "user_settings": {},
                "_trace": ["discord-emulator"],
            },
        )
        for g in guilds:
            self._send_one(session, "GUILD_CREATE", g.create_payload())

    def _send_one(self, session: Session, event: str, data: dict[str, Any]) -> None:
        session.seq += 1
        frame = {"op": DISPATCH, "t": event, "s": session.seq, "d": data}
        session.buffer.append(frame)
        if session.ws is not None:
            self._spawn(session.ws, frame)

    async def _resume(self, ws: web.WebSocketResponse, d: dict[str, Any]) -> None:
        session = self.sessions.get(d.get("session_id") or "")
        if session is None or d.get("token") != self.emu.token:
            await ws.send_str(json.dumps({"op": INVALID_SESSION, "d": False}))
            return
        self.resumes += 1
        if session.ws is not None and session.ws is not ws and not session.ws.closed:
            await session.ws.close(code=4000)
        session.ws = ws
        last = int(d.get("seq") or 0)
        for frame in [f for f in session.buffer if f["s"] > last]:
            self.replayed += 1
            self._spawn(ws, frame)  # FIFO with later dispatches
        self._send_one(session, "RESUMED", {"_trace": ["discord-emulator"]})
