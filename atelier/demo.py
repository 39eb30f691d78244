"""`atelier demo`: the whole product offline, with no token and no network.

A local Discord (the emulator) on 127.0.0.1, the real discord.py bot, and a real `atelier
worker` process training the built-in model on CPU. A scripted member uploads a generated
dataset (the toy concept `tkxw`: a purple star inside a yellow ring), the job trains, grids
arrive in the thread, three members vote, the owner finalizes, and the model file is delivered.
The channel and its thread are written as a self-contained HTML transcript.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from atelier.settings import AtelierSettings, load_settings
from storage.db import make_engine, session_scope
from storage.migrate import upgrade
from storage.models import Checkpoint, Job

log = logging.getLogger("atelier.demo")

TRIGGER = "tkxw"
DEMO_TIMEOUT_SECONDS = 600
PROMPTS = " | ".join(
    (
        "a big {trigger} in the center on a white background",
        "a small {trigger} at the top left on a blue background",
        "a {trigger} on a green and black background",
    )
)
"""New contexts for the concept, in the toy model's vocabulary."""


@dataclass(frozen=True)
class DemoResult:
    transcript: Path
    job_id: int
    winner_step: int
    votes: dict[str, int]
    model_file: Path
    seconds: float


def dataset_zip(count: int = 12, seed: int = 3) -> bytes:
    """A zip of toy scenes of the concept, each with a side-car caption naming the trigger."""
    from trainer.toy.shapes import make_dataset

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, (_scene, image, caption) in enumerate(make_dataset(count, seed, concept=True)):
            png = io.BytesIO()
            image.save(png, format="PNG")
            archive.writestr(f"tkxw_{index:02d}.png", png.getvalue())
            archive.writestr(f"tkxw_{index:02d}.txt", caption)
    return buffer.getvalue()


def demo_settings(data_dir: Path, base_model: str) -> AtelierSettings:
    return load_settings(
        data_dir=data_dir,
        default_base_model=base_model,
        vote_window_hours=1.0,
        keep_checkpoints=1,
        discord={"link_port": 0, "progress_edit_seconds": 1.0},
        worker={"heartbeat_seconds": 1.0, "stale_after_seconds": 20.0, "poll_seconds": 0.3,
                "progress_event_seconds": 1.0, "device": "cpu"},
    )  # fmt: skip


def start_worker(settings: AtelierSettings, log_path: Path) -> subprocess.Popen[bytes]:
    """A real `atelier worker` process on the demo's data folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    env.pop("DISCORD_TOKEN", None)
    env.update(
        ATELIER_DATA_DIR=str(settings.data_dir),
        ATELIER_DEFAULT_BASE_MODEL=settings.default_base_model,
        ATELIER_WORKER__HEARTBEAT_SECONDS=str(settings.worker.heartbeat_seconds),
        ATELIER_WORKER__STALE_AFTER_SECONDS=str(settings.worker.stale_after_seconds),
        ATELIER_WORKER__POLL_SECONDS=str(settings.worker.poll_seconds),
        ATELIER_WORKER__PROGRESS_EVENT_SECONDS=str(settings.worker.progress_event_seconds),
        ATELIER_WORKER__DEVICE="cpu",
    )
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "atelier.cli", "worker", "--id", "demo-worker"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _job(engine: Any, job_id: int) -> Job:
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _checkpoints(engine: Any, job_id: int) -> list[Checkpoint]:
    with session_scope(engine) as session:
        query = session.query(Checkpoint).filter_by(job_id=job_id).order_by(Checkpoint.step)
        return query.all()


def _winner(engine: Any, job_id: int) -> Checkpoint | None:
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        chosen = job.winner_checkpoint_id if job is not None else None
        return session.get(Checkpoint, chosen) if chosen is not None else None


async def run_demo(out_dir: Path, base_model: str, steps: int) -> DemoResult:
    from bot.client import run_bot
    from bot.render import NUMBER_EMOJI, VOTE_EMOJI
    from discord_emulator import DiscordEmulator

    started = time.monotonic()
    data_dir = out_dir / "data"
    settings = demo_settings(data_dir, base_model)
    engine = make_engine(settings.db_url)
    upgrade(engine)
    async with DiscordEmulator() as emu:
        settings = settings.model_copy(update={"discord_token": SecretStr(emu.token)})
        bot = await run_bot(settings, engine)
        worker = start_worker(settings, out_dir / "worker.log")
        try:
            world = emu.default
            print(f"demo: {world.alice.username} runs /train lora with a 12-image zip", flush=True)
            archive = await asyncio.to_thread(dataset_zip)  # off the loop the bot shares
            handle = await emu.run_slash_command(
                world.alice, world.channel, "train lora",
                {"trigger": TRIGGER, "preset": "quick-test", "base_model": base_model,
                 "steps": steps, "name": "purple-star", "validation_prompts": PROMPTS},
                attachments={"dataset": ("tkxw.zip", archive, "application/zip")},
            )  # fmt: skip
            reply = await handle.wait_followup(1, 60)
            match = re.search(r"Job #(\d+)", reply.content)
            if match is None:
                raise RuntimeError(f"the bot did not queue the job: {reply.content}")
            job_id = int(match.group(1))
            thread_id = (await asyncio.to_thread(_job, engine, job_id)).thread_id
            print(f"demo: job #{job_id} queued; training in thread {thread_id}", flush=True)

            done = await emu.wait_for_message(thread_id, "Training done", timeout=420)
            checkpoints = await asyncio.to_thread(_checkpoints, engine, job_id)
            print(f"demo: {len(checkpoints)} checkpoints; three members vote", flush=True)
            await emu.wait_until(
                lambda: NUMBER_EMOJI[len(checkpoints) - 1] in emu.reactions(done.id), 30
            )
            middle = checkpoints[len(checkpoints) // 2]
            emu.add_reaction(world.alice, done.id, NUMBER_EMOJI[len(checkpoints) // 2])
            emu.add_reaction(world.bob, middle.grid_message_id, VOTE_EMOJI)
            emu.add_reaction(world.carol, done.id, NUMBER_EMOJI[len(checkpoints) - 1])
            await asyncio.sleep(1.5)  # reactions reach the bot through the gateway

            closing = await emu.run_slash_command(
                world.alice, world.channel, "job finalize", {"job": job_id}
            )
            await closing.wait_followup(1, 60)
            final = await emu.wait_for_message(thread_id, "The team chose", timeout=60)
            await emu.wait_for_message(world.channel, "New model", timeout=30)
            winner = await asyncio.to_thread(_winner, engine, job_id)
            assert winner is not None and final.attachments
            transcript = out_dir / "index.html"
            emu.render_transcript(world.channel, transcript)
            counts = {str(c.step): 0 for c in checkpoints}
            counts[str(middle.step)] = 2
            counts[str(checkpoints[-1].step)] += 1
            return DemoResult(
                transcript=transcript,
                job_id=job_id,
                winner_step=winner.step,
                votes=counts,
                model_file=Path(winner.path),
                seconds=time.monotonic() - started,
            )
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
            await bot.close()
            engine.dispose()


def demo_cli(argv: list[str]) -> int:
    from storage.logs import configure_logging

    parser = argparse.ArgumentParser(prog="atelier demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo"), help="where to write it")
    parser.add_argument("--base-model", default="toy", help="built-in model to train on")
    parser.add_argument("--steps", type=int, default=100, help="training steps")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    logging.getLogger("discord.client").setLevel(
        logging.ERROR
    )  # "PyNaCl is not installed": no voice
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    try:
        result = asyncio.run(
            asyncio.wait_for(run_demo(args.out, args.base_model, args.steps), DEMO_TIMEOUT_SECONDS)
        )
    except (RuntimeError, TimeoutError, AssertionError) as error:
        print(f"error: the demo did not complete: {error or type(error).__name__}", file=sys.stderr)
        print(f"(worker log: {args.out / 'worker.log'})", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({**result.__dict__, "transcript": str(result.transcript),
                          "model_file": str(result.model_file)}))  # fmt: skip
    print(f"demo: step {result.winner_step} won the vote; model file {result.model_file}")
    print(f"demo: done in {result.seconds:.0f} s; open {result.transcript.resolve()}")
    return 0
