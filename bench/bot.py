"""Bot responsiveness under load: time from the emulator sending INTERACTION_CREATE to the
bot's deferred callback (p50/p99), with 1 and 50 members running `/train lora` at once with
~20 MB zips of random-noise PNGs, and the event loop's worst lag meanwhile (how late an
`asyncio.sleep(0.01)` wakes). The emulator shares the bot's event loop, so its own work is
included. Prints JSON; not part of the tests.

    python bench/bot.py [--members 1 50] [--zip-mb 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

sys.path[0] = str(Path(__file__).resolve().parents[1])

from pydantic import SecretStr  # noqa: E402

from discord_emulator import DiscordEmulator  # noqa: E402
from discord_emulator.interactions import InteractionHandle  # noqa: E402
from storage.db import make_engine  # noqa: E402
from storage.migrate import upgrade  # noqa: E402
from storage.settings import Settings, load_settings  # noqa: E402

SIDE = 768  # one noise PNG ≈ 1.7 MB (incompressible)
WAIT_SECONDS = 45.0  # for the followups of one round, at most


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
    """The worst overshoot of `asyncio.sleep(0.01)` while running."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            start = time.monotonic()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, time.monotonic() - start - 0.01)

    def __enter__(self) -> LagProbe:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def one_round(emu: DiscordEmulator, members: list[Any], zip_bytes: bytes) -> dict[str, Any]:
    d = emu.default
    assert d is not None
    opts = {"trigger": "ohwx", "preset": "quick-test", "steps": 20}
    with LagProbe() as probe:
        started = time.monotonic()
        handles = [
            await emu.run_slash_command(
                m,
                d.channel,
                "train lora",
                opts,
                attachments={"dataset": ("noise.zip", zip_bytes, "application/zip")},
            )
            for m in members
        ]
        with contextlib.suppress(TimeoutError, AssertionError):
            await emu.wait_until(lambda: all(h.followup_ids for h in handles), WAIT_SECONDS)
        elapsed = time.monotonic() - started
    defer = [(h.answered_at - h.created_at) * 1000 for h in handles if hasattr(h, "answered_at")]
    return {
        "members": len(members),
        "zip_mb": round(len(zip_bytes) / 1024**2, 1),
        "deferred": len(defer),
        "defer_ms_p50": round(statistics.median(defer), 1),
        "defer_ms_p99": round(percentile(defer, 0.99), 1),
        "defer_ms_max": round(max(defer), 1),
        "answered": sum(1 for h in handles if h.followup_ids),
        "round_seconds": round(elapsed, 1),
        "loop_lag_ms_max": round(probe.worst * 1000, 1),
    }


def bench_settings(data_dir: Path, token: str) -> Settings:
    settings = load_settings(
        data_dir=data_dir,
        link_secret="bench-secret-of-at-least-32-characters",
        discord={"link_port": 0},
        limits={"jobs_per_member": 10},
    )
    return settings.model_copy(update={"discord_token": SecretStr(token)})


async def run(counts: list[int], zip_mb: float) -> dict[str, Any]:
    from bot.client import run_bot

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
            settings = bench_settings(Path(tmp) / "data", emu.token)
            engine = make_engine(settings.db_url)
            upgrade(engine)
            bot = await run_bot(settings, engine)
            try:
                for count in counts:
                    rounds.append(await one_round(emu, members[:count], zip_bytes))
            finally:
                await bot.close()
                engine.dispose()
    return {"bench": "bot", "zip_build_seconds": round(zip_seconds, 1), "rounds": rounds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--zip-mb", type=float, default=20.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.members, args.zip_mb)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
