"""Shared helpers for the end-to-end tests: a job through `/train`, the worker's side of a
training written straight through `storage.jobs` (fast: no real training), and one base model
end to end with a real worker (refusals, training, votes, delivery)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from PIL import Image
from safetensors import safe_open
from sqlalchemy.engine import Engine

from bot.render import VOTE_EMOJI
from storage import jobs
from storage.db import session_scope
from storage.models import Checkpoint, Event, Job, utcnow
from tests.bot.conftest import WorkerThread

WORKER = "w"


async def train(emu: Any, user: Any, zip_bytes: bytes, **options: Any) -> tuple[int, Any]:
    """Run `/train lora` as `user`; (job id or 0, the ephemeral reply)."""
    opts = {"trigger": "ohwx", "preset": "quick-test", "steps": 20, **options}
    handle = await emu.run_slash_command(
        user,
        emu.default.channel,
        "train lora",
        opts,
        attachments={"dataset": ("set.zip", zip_bytes, "application/zip")},
    )
    reply = await handle.wait_followup(1, 30)
    match = re.search(r"Job #(\d+)", reply.content)
    return (int(match.group(1)) if match else 0), reply


async def command(
    emu: Any, user: Any, name: str, options: dict[str, Any] | None = None, channel: Any = None
) -> Any:
    """Run a slash command and return its first followup."""
    handle = await emu.run_slash_command(user, channel or emu.default.channel, name, options or {})
    return await handle.wait_followup(1, 15)


def job_row(engine: Engine, job_id: int) -> Job:
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def png(path: Path, shade: int) -> Path:
    Image.new("RGB", (16, 16), (shade % 256, 40, 90)).save(path)
    return path


def fake_checkpoint(engine: Engine, tmp: Path, job_id: int, step: int) -> Checkpoint:
    model = tmp / f"m{job_id}-{step}.safetensors"
    model.write_bytes(b"weights" * step)
    return jobs.add_checkpoint(
        engine,
        job_id,
        WORKER,
        Checkpoint(
            job_id=job_id,
            step=step,
            path=str(model),
            grid_path=str(png(tmp / f"g{step}.png", step)),
            loss=0.1,
        ),
    )


def train_to_vote(
    engine: Engine,
    tmp: Path,
    job_id: int,
    *,
    deadline_in: float = 3600.0,
    steps: tuple[int, ...] = (10, 20),
) -> list[Checkpoint]:
    """Claim, train (one checkpoint per step) and finish a job, as a worker would."""
    claimed = jobs.claim(engine, WORKER)
    assert claimed is not None and claimed.id == job_id
    jobs.start_training(engine, job_id, WORKER, total_steps=steps[-1])
    ckpts = [fake_checkpoint(engine, tmp, job_id, step) for step in steps]
    jobs.finish_training(
        engine,
        job_id,
        WORKER,
        utcnow() + timedelta(seconds=deadline_in),
        comparison_grid=str(png(tmp / "cmp.png", 7)),
    )
    return ckpts


def undelivered(engine: Engine, job_id: int) -> list[str]:
    with session_scope(engine) as session:
        return [
            e.kind for e in session.query(Event).filter_by(job_id=job_id) if e.delivered_at is None
        ]


def texts(emu: Any, channel: Any, needle: str) -> list[Any]:
    """Messages of a channel whose content or embed title contains `needle`."""
    return [
        m
        for m in emu.timeline(channel)
        if needle in m.content or any(needle in str(e.get("title")) for e in m.embeds)
    ]


# ---------------------------------------------------------------- one base model, end to end


async def base_model_choices(emu: Any, typed: str) -> list[dict[str, Any]]:
    """The `/train lora` base_model autocomplete choices for `typed`."""
    d = emu.default
    handle = await emu.run_autocomplete(d.alice, d.channel, "train lora", "base_model", typed)
    return await handle.wait_choices()


async def refuse_embedding(emu: Any, engine: Engine, zip_bytes: bytes, base_model: str) -> Any:
    """`/train embedding` on `base_model`: an ephemeral one-line reply (returned), nothing
    queued."""
    d = emu.default
    handle = await emu.run_slash_command(
        d.alice,
        d.channel,
        "train embedding",
        {"trigger": "ohwx", "base_model": base_model, "preset": "quick-test"},
        attachments={"dataset": ("set.zip", zip_bytes, "application/zip")},
    )
    reply = await handle.wait_followup(1, 20)
    assert reply.ephemeral and "\n" not in reply.content.strip()
    with session_scope(engine) as session:
        assert session.query(Job).count() == 0  # nothing was queued
    return reply


async def train_vote_and_deliver(
    emu: Any, settings: Any, engine: Engine, zip_bytes: bytes, **options: Any
) -> tuple[Job, list[str], dict[str, str]]:
    """`/train lora` (20 steps at 64 px, `options`), a real worker trains it, grids with vote
    reactions in the thread, two votes on the last step, `/job finalize` keeps it and the thread
    gets exactly that file. Returns the job, the delivered file's keys and its metadata."""
    d = emu.default
    job_id, reply = await train(emu, d.alice, zip_bytes, steps=20, resolution=64, **options)
    assert job_id, reply.content
    job = job_row(engine, job_id)
    with WorkerThread(settings, engine):
        await emu.wait_until(lambda: job_row(engine, job_id).state == "awaiting_vote", 240)
        done = await emu.wait_for_message(job.thread_id, "Training done", timeout=20)
    with session_scope(engine) as session:
        ckpts = session.query(Checkpoint).filter_by(job_id=job_id).order_by(Checkpoint.step).all()
    assert len(ckpts) >= 2 and all(c.grid_message_id for c in ckpts)
    grid = emu.message(ckpts[0].grid_message_id)
    assert grid.attachments and VOTE_EMOJI in emu.reactions(grid.id)
    assert done.attachments

    emu.add_reaction(d.alice, ckpts[-1].grid_message_id, VOTE_EMOJI)
    emu.add_reaction(d.bob, ckpts[-1].grid_message_id, VOTE_EMOJI)
    closing = await emu.run_slash_command(d.alice, d.channel, "job finalize", {"job": job_id})
    msg = await closing.wait_followup(1, 30)
    assert f"step {ckpts[-1].step} kept" in msg.content
    final = await emu.wait_for_message(job.thread_id, "The team chose", timeout=20)
    delivered = emu.attachment_bytes(final.id)
    assert delivered == Path(ckpts[-1].path).read_bytes()
    with safe_open(str(ckpts[-1].path), framework="pt") as handle:
        return job, list(handle.keys()), handle.metadata()
