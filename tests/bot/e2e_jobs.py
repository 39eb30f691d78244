"""Shared helpers for the end-to-end tests: a job through `/train`, and the worker's side of a
training written straight through `storage.jobs` (fast: no real training)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from PIL import Image
from sqlalchemy.engine import Engine

from storage import jobs
from storage.db import session_scope
from storage.models import Checkpoint, Event, Job, utcnow

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
