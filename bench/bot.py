"""Bot responsiveness under load: time from the emulator sending INTERACTION_CREATE to the
bot's deferred callback (p50/p99), with 1 and 50 members running `/train lora` at once with
~20 MB zips of random-noise PNGs, and the bot's event-loop lag meanwhile (how late an
`asyncio.sleep(0.01)` wakes: p50/p99/max). The bot runs in a process of its own (as in
production, where Discord is elsewhere); the emulator and this driver run here. Prints JSON;
not part of the tests.

    python bench/bot.py [--members 1 50] [--zip-mb 20]

Goals: acks p99 < 300 ms, loop lag p99 < 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)

from pydantic import SecretStr  # noqa: E402

from atelier.settings import AtelierSettings, load_settings  # noqa: E402
from discord_emulator import DiscordEmulator  # noqa: E402
from discord_emulator.interactions import InteractionHandle  # noqa: E402
from storage.db import make_engine  # noqa: E402
from storage.migrate import upgrade  # noqa: E402

SIDE = 768  # one noise PNG ≈ 1.7 MB (incompressible)
WAIT_SECONDS = 180.0  # for the followups of one round, at most


def noise_zip(megabytes: float) -> bytes:
    """Random-noise PNGs (they do not compress) until the zip holds about `megabytes`."""
    import os

    from PIL import Image

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        i = 0
        while buf.tell() < megabytes * 1024**2:
            image = Image.frombytes("RGB", (SIDE, SIDE), os.urandom(SIDE * SIDE * 3))
            png = io.BytesIO()
            image.save(png, "PNG", compress_level=1)
            zf.writestr(f"noise{i}.png", png.getvalue())
            i += 1
    return buf.getvalue()


def timed_callbacks() -> None:
    """Record when each interaction's first callback arrives (the defer)."""
    original = InteractionHandle.respond

    def respond(self: Any, body: dict[str, Any], files: list[Any]) -> dict[str, Any]:
        if not hasattr(self, "answered_at"):
            self.answered_at = time.monotonic()
        return original(self, body, files)

    InteractionHandle.respond = respond  # type: ignore[method-assign]


class LagProbe:
    """How late each `asyncio.sleep(0.01)` wakes, while running (in the bot's process)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            start = time.monotonic()
            await asyncio.sleep(0.01)
            self.samples.append(time.monotonic() - start - 0.01)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def take(self) -> dict[str, float]:
        """Lag percentiles (ms) since the last call."""
        samples, self.samples = self.samples, []
        if not samples:
            return {}
        return {
            "loop_lag_ms_p50": round(percentile(samples, 0.5) * 1000, 1),
            "loop_lag_ms_p99": round(percentile(samples, 0.99) * 1000, 1),
            "loop_lag_ms_max": round(max(samples) * 1000, 1),
        }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def one_round(
    emu: DiscordEmulator, members: list[Any], zip_bytes: bytes, bot: BotProcess
) -> dict[str, Any]:
    d = emu.default
    assert d is not None
    opts = {"trigger": "ohwx", "preset": "quick-test", "steps": 20}
    await bot.lag()  # drop the samples from before this round
    started = time.monotonic()
    handles = []
    for m in members:  # all at once, but each sent as it is made (not batched in one tick)
        handles.append(
            await emu.run_slash_command(
                m,
                d.channel,
                "train lora",
                opts,
                attachments={"dataset": ("noise.zip", zip_bytes, "application/zip")},
            )
        )
        await asyncio.sleep(0)
    with contextlib.suppress(TimeoutError, AssertionError):
        await emu.wait_until(lambda: all(h.followup_ids for h in handles), WAIT_SECONDS)
    elapsed = time.monotonic() - started
    lag = await bot.lag()
    defer = [(h.answered_at - h.created_at) * 1000 for h in handles if hasattr(h, "answered_at")]
    return {
        "members": len(members),
        "zip_mb": round(len(zip_bytes) / 1024**2, 1),
        "deferred": len(defer),
        "defer_ms_p50": round(statistics.median(defer), 1),
        "defer_ms_p99": round(percentile(defer, 0.99), 1),
        "defer_ms_max": round(max(defer), 1),
        "answered": sum(1 for h in handles if h.followup_ids),
        "queued": sum(1 for h in handles if any("is queued" in m.content for m in h.followups)),
        "round_seconds": round(elapsed, 1),
        **lag,
    }


class BotProcess:
    """The real bot in a child process, talking to this process's emulator; it reports its
    loop lag when asked (one JSON line per request on its stdout)."""

    def __init__(self, emu: DiscordEmulator, data_dir: Path) -> None:
        config = {"api": emu.api_base, "gateway": emu.gateway_url, "token": emu.token}
        config["data_dir"] = str(data_dir)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--bot-child", json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )

    async def _line(self) -> str:
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        if not line:
            raise RuntimeError("the bot process stopped")
        return line

    async def ready(self) -> None:
        assert (await self._line()).strip() == "ready"

    async def lag(self) -> dict[str, float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("lag\n")
        self.proc.stdin.flush()
        return json.loads(await self._line())

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def bot_child(config: dict[str, Any]) -> None:
    """Run the bot against the emulator at `config`, answering `lag` requests on stdin."""
    import discord.gateway
    import discord.http
    import yarl

    from bot.client import run_bot

    discord.http.Route.BASE = config["api"]  # what DiscordEmulator.patch_discord does
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(config["gateway"])
    logging.basicConfig(level=logging.WARNING)
    settings = bench_settings(Path(config["data_dir"]), config["token"])
    engine = make_engine(settings.db_url)
    upgrade(engine)
    bot = await run_bot(settings, engine)
    if os.environ.get("BENCH_SLOW_CALLBACKS"):  # name what blocks the loop (slows it a bit)
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        loop.slow_callback_duration = float(os.environ["BENCH_SLOW_CALLBACKS"])
        logging.getLogger("asyncio").setLevel(logging.WARNING)
    probe = LagProbe()
    probe.start()
    print("ready", flush=True)
    try:
        while line := await asyncio.to_thread(sys.stdin.readline):
            if line.strip() == "lag":
                print(json.dumps(probe.take()), flush=True)
    finally:
        await bot.close()
        engine.dispose()


def bench_settings(data_dir: Path, token: str) -> AtelierSettings:
    settings = load_settings(
        data_dir=data_dir,
        link_secret="bench-secret-of-at-least-32-characters",
        discord={"link_port": 0},
        limits={"jobs_per_member": 10},
    )
    return settings.model_copy(update={"discord_token": SecretStr(token)})


async def run(counts: list[int], zip_mb: float) -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING)
    timed_callbacks()
    made = time.monotonic()
    zip_bytes = await asyncio.to_thread(noise_zip, zip_mb)
    zip_seconds = time.monotonic() - made
    rounds = []
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        async with DiscordEmulator() as emu:
            d = emu.default
            assert d is not None
            members = [emu.create_user(f"member{i}") for i in range(max(counts))]
            for user in members:
                emu.add_member(d.guild, user)
            bot = BotProcess(emu, Path(tmp) / "data")
            try:
                await bot.ready()
                for count in counts:
                    rounds.append(await one_round(emu, members[:count], zip_bytes, bot))
            finally:
                bot.stop()
    return {
        "bench": "bot",
        "bot_process": "separate from the emulator",
        "zip_build_seconds": round(zip_seconds, 1),
        "goals": {"defer_ms_p99": 300, "loop_lag_ms_p99": 50},
        "rounds": rounds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--zip-mb", type=float, default=20.0)
    parser.add_argument("--bot-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bot_child:
        asyncio.run(bot_child(json.loads(args.bot_child)))
        return 0
    print(json.dumps(asyncio.run(run(args.members, args.zip_mb)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
